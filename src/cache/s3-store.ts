// The BlobStore on S3-compatible object storage (AWS S3, Ceph RGW, MinIO), for replicas that
// share a bucket. Keys are content-addressed: <prefix>blobs/sha256/ab/<hex>. Downloads are
// verified in a local temp file (each replica's scratch disk, scratch.ts) and only verified
// content is uploaded. Beside blobs/, `<prefix>_mirror/` holds the few small objects the
// replicas coordinate eviction through (conditional writes: If-None-Match / If-Match).

import { createReadStream } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { PassThrough, Readable } from 'node:stream';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import type { S3StoreOptions } from '../config.js';
import { BodyTooLarge, readLimited } from '../http/body.js';
import type { Digest } from '../oci/reference.js';
import { ContentTooLarge, PreconditionFailed, type BlobStore, type ControlObjects, type StoredObject } from './blob-store.js';

function notFound(err: unknown): boolean {
  if (err instanceof S3ServiceException) return err.$metadata.httpStatusCode === 404 || err.name === 'NotFound' || err.name === 'NoSuchKey';
  return false;
}

function preconditionFailed(err: unknown): boolean {
  // 409 ConditionalRequestConflict: AWS's answer to a conditional write racing another.
  return err instanceof S3ServiceException && (err.$metadata.httpStatusCode === 412 || err.$metadata.httpStatusCode === 409);
}

export class S3BlobStore implements BlobStore {
  readonly kind = 's3' as const;
  readonly control: ControlObjects;
  private readonly client: S3Client;

  constructor(private readonly options: S3StoreOptions) {
    this.client = new S3Client({
      region: options.region,
      endpoint: options.endpoint,
      forcePathStyle: options.forcePathStyle,
      credentials: options.accessKeyId && options.secretAccessKey ? { accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey } : undefined,
      // Ceph RGW and older S3 implementations reject streamed uploads with the new default checksums.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
    this.control = this.controlObjects();
  }

  private key(digest: Digest): string {
    return `${this.options.prefix}blobs/${digest.algorithm}/${digest.hex.slice(0, 2)}/${digest.hex}`;
  }

  async init(): Promise<void> {
    // The bucket is the operator's: nothing to create.
  }

  async stat(digest: Digest): Promise<StoredObject | undefined> {
    try {
      const head = await this.client.send(new HeadObjectCommand({ Bucket: this.options.bucket, Key: this.key(digest) }));
      return { digest: digest.value, size: head.ContentLength ?? 0 };
    } catch (err) {
      if (notFound(err)) return undefined;
      throw err;
    }
  }

  createReadStream(digest: Digest, start?: number, end?: number): Readable {
    const out = new PassThrough({ highWaterMark: 1024 * 1024 });
    const range = start !== undefined || end !== undefined ? `bytes=${start ?? 0}-${end ?? ''}` : undefined;
    this.client
      .send(new GetObjectCommand({ Bucket: this.options.bucket, Key: this.key(digest), Range: range }))
      .then((res) => {
        const body = res.Body as Readable | undefined;
        if (!body) throw new Error('empty S3 response body');
        body.on('error', (e) => out.destroy(e));
        out.on('close', () => body.destroy());
        body.pipe(out);
      })
      .catch((err: unknown) => out.destroy(err instanceof Error ? err : new Error(String(err))));
    return out;
  }

  async read(digest: Digest, maxBytes = Infinity): Promise<Buffer | undefined> {
    let res;
    try {
      res = await this.client.send(new GetObjectCommand({ Bucket: this.options.bucket, Key: this.key(digest) }));
    } catch (err) {
      if (notFound(err)) return undefined;
      throw err;
    }
    const body = res.Body as Readable | undefined;
    if (!body) throw new Error('empty S3 response body');
    // The size is in the answer's headers: a big object is refused before its body is read.
    if (res.ContentLength !== undefined && res.ContentLength > maxBytes) {
      body.destroy();
      throw new ContentTooLarge(digest.value, res.ContentLength, maxBytes);
    }
    return readLimited(body, maxBytes).catch((err: unknown) => {
      throw err instanceof BodyTooLarge ? new ContentTooLarge(digest.value, Number.NaN, maxBytes) : err;
    });
  }

  async commit(tempPath: string, digest: Digest): Promise<void> {
    try {
      // Another replica (the digest's owner) may have stored it already: content-addressed, so done.
      if (await this.stat(digest)) return;
      // Multipart for big blobs; CompleteMultipartUpload's ETag is not relied upon (Ceph leaves it empty).
      await new Upload({
        client: this.client,
        params: { Bucket: this.options.bucket, Key: this.key(digest), Body: createReadStream(tempPath, { highWaterMark: 1024 * 1024 }), ContentType: 'application/octet-stream' },
        partSize: 16 * 1024 * 1024,
        queueSize: 4,
      }).done();
    } finally {
      await unlink(tempPath).catch(() => undefined);
    }
  }

  async write(digest: Digest, bytes: Uint8Array): Promise<void> {
    await this.client.send(new PutObjectCommand({ Bucket: this.options.bucket, Key: this.key(digest), Body: bytes, ContentLength: bytes.length }));
  }

  async delete(digest: Digest): Promise<boolean> {
    const existed = (await this.stat(digest)) !== undefined;
    await this.client.send(new DeleteObjectCommand({ Bucket: this.options.bucket, Key: this.key(digest) }));
    return existed;
  }

  async *list(): AsyncGenerator<StoredObject> {
    let token: string | undefined;
    const prefix = `${this.options.prefix}blobs/`;
    do {
      const page = await this.client.send(new ListObjectsV2Command({ Bucket: this.options.bucket, Prefix: prefix, ContinuationToken: token }));
      for (const o of page.Contents ?? []) {
        const m = /blobs\/([a-z0-9]+)\/[a-f0-9]{2}\/([a-f0-9]+)$/.exec(o.Key ?? '');
        if (m) yield { digest: `${m[1]}:${m[2]}`, size: o.Size ?? 0, modifiedAt: o.LastModified?.getTime() };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  async directUrl(digest: Digest): Promise<string | undefined> {
    if (this.options.redirectTtlMs <= 0) return undefined;
    return getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.options.bucket, Key: this.key(digest) }), {
      expiresIn: Math.max(1, Math.round(this.options.redirectTtlMs / 1000)),
    });
  }

  private controlObjects(): ControlObjects {
    const { bucket } = this.options;
    const base = `${this.options.prefix}_mirror/`;
    const client = this.client;
    const unquoted = (etag: string | undefined) => (etag ?? '').replace(/"/g, '');
    return {
      async get(name, maxBytes) {
        try {
          const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: base + name }));
          if ((res.ContentLength ?? 0) > maxBytes) {
            (res.Body as Readable | undefined)?.destroy();
            throw new Error(`${base + name} is ${res.ContentLength} bytes, more than the ${maxBytes} allowed`);
          }
          return { body: Buffer.from(await res.Body!.transformToByteArray()), etag: unquoted(res.ETag) };
        } catch (err) {
          if (notFound(err)) return undefined;
          throw err;
        }
      },
      async put(name, body, condition) {
        const write = (conditionHeaders: { IfNoneMatch?: string; IfMatch?: string }) =>
          client.send(new PutObjectCommand({ Bucket: bucket, Key: base + name, Body: body, ContentLength: body.length, ContentType: 'application/json', ...conditionHeaders }));
        try {
          if (!condition) return unquoted((await write({})).ETag);
          if ('ifAbsent' in condition) return unquoted((await write({ IfNoneMatch: '*' })).ETag);
          // Ceph RGW (16) matches If-Match only against the bare ETag, AWS and MinIO take both
          // forms: a refusal of one form is tried once with the other (a real mismatch fails both).
          try {
            return unquoted((await write({ IfMatch: condition.ifEtag })).ETag);
          } catch (err) {
            if (!preconditionFailed(err)) throw err;
            return unquoted((await write({ IfMatch: `"${condition.ifEtag}"` })).ETag);
          }
        } catch (err) {
          if (preconditionFailed(err)) throw new PreconditionFailed(base + name);
          throw err;
        }
      },
      async delete(name) {
        await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: base + name }));
      },
      async list(prefix) {
        const out: { name: string; modifiedAt: number }[] = [];
        let token: string | undefined;
        do {
          const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: base + prefix, ContinuationToken: token }));
          for (const o of page.Contents ?? []) {
            if (o.Key) out.push({ name: o.Key.slice(base.length), modifiedAt: o.LastModified?.getTime() ?? 0 });
          }
          token = page.IsTruncated ? page.NextContinuationToken : undefined;
        } while (token);
        return out;
      },
    };
  }
}
