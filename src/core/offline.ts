// Offline mode: the mirror never contacts an upstream and answers only from its cache.

import { RegistryError } from '../oci/errors.js';
import type { Route } from '../upstream/selector.js';

/** What an offline mirror answers for content it does not hold. */
export function offlineMiss(code: 'MANIFEST_UNKNOWN' | 'BLOB_UNKNOWN' | 'NAME_UNKNOWN', route: Route, what: string): RegistryError {
  return new RegistryError(code, `${what} is not cached and the mirror is offline`, {
    detail: { upstream: route.upstream.name, repository: route.repository, offline: true },
  });
}
