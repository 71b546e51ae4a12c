// The configured content store and the scratch space beside it. The S3 driver (and its
// SDK, ~40 MiB of RSS) loads only when configured.

import type { Config } from '../config.js';
import type { BlobStore } from './blob-store.js';
import { FileBlobStore } from './file-store.js';
import { ScratchSpace } from './scratch.js';

export interface Storage {
  store: BlobStore;
  scratch: ScratchSpace;
  /** Temp files of dead processes removed by this start. */
  sweptTempFiles: number;
}

/** Open (and create) the storage; only a server sweeps the scratch space (`sweep`). */
export async function openStorage(config: Pick<Config, 'storage'>, { sweep }: { sweep: boolean }): Promise<Storage> {
  const scratch = new ScratchSpace(config.storage.path);
  const s3 = config.storage.s3;
  let store: BlobStore;
  if (config.storage.driver === 's3' && s3) {
    const { S3BlobStore } = await import('./s3-store.js');
    store = new S3BlobStore(s3);
  } else {
    store = new FileBlobStore(config.storage.path, scratch);
  }
  await store.init();
  const { sweptTempFiles } = await scratch.init({ sweep });
  return { store, scratch, sweptTempFiles };
}
