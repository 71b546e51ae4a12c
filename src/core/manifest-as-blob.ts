// A manifest asked for as a blob. containerd retries /blobs/<digest> when /manifests/<digest>
// answers 404, and the spec's content store is one: a manifest's digest names its bytes
// wherever they are asked for. The store holds manifests beside blobs, so a stored (and
// linked) manifest is a blob hit already; this covers the cold case, where the upstream's
// blob endpoint does not know a manifest (distribution answers 404 BLOB_UNKNOWN): the
// manifest is fetched by digest from the manifest endpoint, verified and stored as a
// manifest (manifest-service.ts), and its bytes served as the blob.

import { Readable } from 'node:stream';
import { RegistryError } from '../oci/errors.js';
import type { Digest } from '../oci/reference.js';
import type { Route } from '../upstream/selector.js';
import type { ManifestService } from './manifest-service.js';
import type { BlobResult } from './results.js';

/** `loadBlob()`, or when it is a 404 BLOB_UNKNOWN, the manifest by that digest as a blob. */
export async function blobOrManifest(manifests: ManifestService, route: Route, digest: Digest, loadBlob: () => Promise<BlobResult>): Promise<BlobResult> {
  try {
    return await loadBlob();
  } catch (err) {
    if (!(err instanceof RegistryError) || err.code !== 'BLOB_UNKNOWN' || err.status !== 404) throw err;
    let manifest;
    try {
      manifest = await manifests.get(route, { kind: 'digest', digest }, undefined);
    } catch {
      // Not a manifest either (or the manifest endpoint failed on it: distribution answers
      // 500 for some digests there): the client asked for a blob, and it is unknown.
      throw err;
    }
    const { bytes } = manifest;
    return {
      digest: manifest.digest,
      size: bytes.length,
      outcome: manifest.outcome,
      open: (start, end) => Readable.from([bytes.subarray(start, end === undefined ? bytes.length : end + 1)]),
    };
  }
}
