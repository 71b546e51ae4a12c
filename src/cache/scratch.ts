// The local scratch space: temp files for downloads (and imports) in progress, on the
// cache's own disk whatever store the verified content goes to. Temp files are named after
// their process, so that a command running beside a live server never sweeps its downloads.

import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { mkdir, open, readdir, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';

export interface TempFile {
  path: string;
  handle: FileHandle;
}

/** Does process `pid` exist (temp files and journals are named after their process)? */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class ScratchSpace {
  readonly dir: string;

  constructor(root: string) {
    this.dir = join(root, 'tmp');
  }

  /** Create the directory and remove what unfinished downloads of dead processes left. */
  async init({ sweep = true }: { sweep?: boolean } = {}): Promise<{ sweptTempFiles: number }> {
    await mkdir(this.dir, { recursive: true });
    let swept = 0;
    // Maintenance commands run beside a live server: only the server sweeps.
    if (!sweep) return { sweptTempFiles: 0 };
    for (const name of await readdir(this.dir)) {
      // A live process's temp files (a prewarm, or a second server on the same storage) are still being written.
      const pid = Number(name.split('-')[0]);
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isProcessAlive(pid)) continue;
      await rm(join(this.dir, name), { force: true, recursive: true });
      swept++;
    }
    return { sweptTempFiles: swept };
  }

  async createTemp(): Promise<TempFile> {
    const path = join(this.dir, `${process.pid}-${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`);
    // Exclusive: two writers never share a temp file.
    const handle = await open(path, fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_RDWR, 0o644);
    return { path, handle };
  }
}
