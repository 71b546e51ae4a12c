#!/usr/bin/env -S node --max-semi-space-size=2
// The `mirror` command. `serve` runs the mirror; later commands (prewarm, export, import,
// gc, verify, ls, stats, client-config) share the same configuration options.

import { Argument, Command, Option } from 'commander';
import cluster from 'node:cluster';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import pino from 'pino';
import type { PrewarmProgress } from './airgap/prewarm.js';
import { parsePlatform, type Platform } from './oci/manifest.js';
import { dirname, join } from 'node:path';
import { clientConfig, type ClientKind } from './client-config.js';
import { ConfigError, loadConfig, type Config, type ConfigOverrides } from './config.js';
import { createLogger } from './log.js';
import { formatBytes, parseSize } from './units.js';
import { UpstreamRegistry } from './upstream/registry.js';

interface CommonOptions {
  config?: string;
  storage?: string;
  upstream?: string;
  ttl?: string;
  logLevel?: string;
}

function withConfigOptions(cmd: Command): Command {
  return cmd
    .option('-c, --config <file>', 'configuration file (default: ./mirror.config.yaml when present; env MIRROR_CONFIG)')
    .option('--storage <dir>', 'cache directory (env MIRROR_STORAGE)')
    .option('--upstream <url>', "replace the default upstream's URL, e.g. a private registry or another mirror (env MIRROR_UPSTREAM)")
    .option('--ttl <duration>', 'how long tags are trusted before revalidation, for every upstream: 10m, 1h, 0 (env MIRROR_TTL)')
    .option('--offline', 'never contact an upstream; use only what is cached (env MIRROR_OFFLINE)')
    .addOption(
      new Option('--log-level <level>', 'log level (env MIRROR_LOG_LEVEL)').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
    );
}

function configFrom(options: CommonOptions & ConfigOverrides): Config {
  // `--upstream` is a URL for serve; for ls it may also name an upstream to filter by.
  if (options.upstream && !options.upstream.includes('://')) options = { ...options, upstream: undefined };
  try {
    return loadConfig({
      file: options.config,
      overrides: {
        listen: options.listen,
        port: options.port,
        storage: options.storage,
        upstream: options.upstream,
        ttl: options.ttl,
        logLevel: options.logLevel,
        offline: options.offline,
        workers: options.workers,
      },
    });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`mirror: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
}

async function serve(options: CommonOptions & ConfigOverrides): Promise<void> {
  const config = configFrom(options);
  // workers > 1: this process is the primary (src/workers/primary.ts) and the forks run the
  // code below, each its own mirror on the shared socket. The primary loads no mirror code.
  if (cluster.isPrimary && config.workers > 1) {
    const { runPrimary } = await import('./workers/primary.js');
    return runPrimary(config, createLogger(config.log.level));
  }
  const link = cluster.isWorker ? new (await import('./workers/worker-link.js')).WorkerLink(cluster.worker!.id) : undefined;
  const logger = link ? createLogger(config.log.level).child({ worker: link.id }) : createLogger(config.log.level);
  const [{ createMirror }, { startServer }] = await Promise.all([import('./mirror.js'), import('./server/app.js')]);
  const mirror = await createMirror({ config, logger, siblings: link });
  if (link) (await import('./workers/worker-link.js')).shareMetrics(mirror.metrics.registry);
  const server = await startServer(mirror);
  const started = {
    listen: `${config.listen.host}:${config.listen.port}`,
    storage: config.storage.path,
    offline: config.offline,
    upstreams: config.upstreams.map((u) => ({ name: u.name, url: u.url, ttlMs: u.ttlMs, credentials: u.credentials.map((c) => c.name) })),
    defaultUpstream: config.defaultUpstream,
  };
  // A worker does not log the url: the primary does, once, when every worker listens.
  if (link) logger.info({ pid: process.pid }, 'worker listening');
  else logger.info({ url: server.url, ...started }, 'mirror listening');
  logger.flush();

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) {
      // The primary's order repeats what a terminal's signal to the whole group already said.
      if (signal === 'primary') return;
      logger.warn({ signal }, 'second signal: exiting now');
      logger.flush();
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal }, 'shutting down: finishing in-flight requests');
    await server.close(10_000);
    await mirror.close();
    logger.info('stopped');
    logger.flush();
    process.exit(0);
  };
  const reload = () => {
    try {
      server.reload();
      logger.info('TLS certificate and htpasswd file reloaded');
    } catch (err) {
      logger.error({ err }, 'reload failed; keeping the old certificate and users');
    }
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGHUP', reload);
  link?.onOrders({ shutdown: () => void stop('primary'), reload });
}

const program = new Command();
program.name('mirror').description('A pull-through caching container registry mirror').version('0.1.0');

withConfigOptions(
  program
    .command('serve')
    .description('serve the Registry v2 pull API from the cache, falling through to the upstreams')
    .option('--listen <host:port>', 'address to listen on (env MIRROR_LISTEN; default 0.0.0.0:5000)')
    .option('-p, --port <port>', 'port to listen on, keeping the configured host (env MIRROR_PORT)')
    .option('--workers <n|auto>', 'processes serving the port: auto = one per CPU, 1 = a single process (env MIRROR_WORKERS; default auto)'),
).action((options: CommonOptions & ConfigOverrides) => serve(options));

function printTable(rows: Record<string, string | number>[], columns: string[]): void {
  if (rows.length === 0) return;
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => String(r[c] ?? '').length)));
  const line = (cells: string[]) => cells.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd();
  process.stdout.write(`${line(columns.map((c) => c.toUpperCase()))}\n`);
  for (const r of rows) process.stdout.write(`${line(columns.map((c) => String(r[c] ?? '')))}\n`);
}

function ago(ms: number | null | undefined): string {
  if (!ms) return '-';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  if (s < 172800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

function platformsFrom(options: { platform?: string; allPlatforms?: boolean }): Platform[] | undefined {
  if (options.allPlatforms) return undefined;
  const text = options.platform ?? `linux/${process.arch === 'x64' ? 'amd64' : process.arch}`;
  try {
    return text.split(',').map((p) => parsePlatform(p.trim()));
  } catch (err) {
    process.stderr.write(`mirror: ${(err as Error).message}\n`);
    process.exit(2);
  }
}

interface ReferrersOptions {
  /** false with --no-referrers (commander's negation). */
  referrers?: boolean;
  withReferrers?: boolean;
}

/** Whether to carry images' referrers: yes unless --no-referrers (--with-referrers says the default out loud). */
function referrersFrom(options: ReferrersOptions): boolean {
  if (options.withReferrers && options.referrers === false) {
    process.stderr.write('mirror: --with-referrers and --no-referrers contradict each other\n');
    process.exit(2);
  }
  return options.referrers !== false;
}

/** --with-referrers / --no-referrers, for the commands that carry images (prewarm, export). */
function withReferrersOptions(cmd: Command, verb: string): Command {
  return cmd
    .option('--with-referrers', `also ${verb} each image's referrers (signatures, SBOMs, attestations), recursively, and cosign's .sig/.att/.sbom tags (the default)`)
    .option('--no-referrers', `${verb} the images only, without their referrers and cosign tags`);
}

function imagesFrom(refs: string[], file: string | undefined): string[] {
  const all = [...refs];
  if (file) {
    const text = file === '-' ? readFileSync(0, 'utf8') : readFileSync(file, 'utf8');
    for (const line of text.split('\n')) {
      const ref = line.replace(/#.*/, '').trim();
      if (ref) all.push(ref);
    }
  }
  if (all.length === 0) {
    process.stderr.write('mirror: no images given (arguments or -f FILE)\n');
    process.exit(2);
  }
  return all;
}

/** Open the cache's index and store beside a possibly running server, run `work`, close. */
async function withCache(config: Config, work: (cache: import('./maintenance.js').Cache) => Promise<void> | void): Promise<void> {
  const { openCache } = await import('./maintenance.js');
  const cache = await openCache(config);
  try {
    await work(cache);
  } finally {
    cache.close();
  }
}

/** A command's action on the cache: the configuration from its options, the cache opened and closed around it. */
function onCache<O extends object>(run: (cache: import('./maintenance.js').Cache, config: Config, options: O) => Promise<void>) {
  return async (options: CommonOptions & ConfigOverrides & O) => {
    const config = configFrom(options);
    await withCache(config, (cache) => run(cache, config, options));
  };
}

/** A command's result: as one line of JSON with --json, else in words for people. */
function report<T>(json: boolean | undefined, result: T, inWords: (result: T) => void): void {
  if (json) process.stdout.write(`${JSON.stringify(result)}\n`);
  else inWords(result);
}

/** The core without the HTTP server, for commands that pull (prewarm, export, import). */
async function coreFor(options: CommonOptions & ConfigOverrides) {
  const config = configFrom(options);
  const logger = pino({ level: config.log.level === 'info' ? 'warn' : config.log.level }, pino.destination(2));
  const { createMirror } = await import('./mirror.js');
  return createMirror({ config, logger, oneShot: true });
}

withReferrersOptions(withConfigOptions(program.command('prewarm').description('fill the cache with images, through the same core as a client pull')), 'fetch')
  .argument('[images...]', 'references as users write them: alpine:3.19, ghcr.io/org/app@sha256:…')
  .option('-f, --file <file>', 'read more references from a file, one per line (# comments; - for stdin)')
  .option('--platform <list>', 'platforms to fetch from multi-arch images, e.g. linux/amd64,linux/arm64 (default: this machine\'s)')
  .option('--all-platforms', 'fetch every platform of multi-arch images')
  .option('--concurrency <n>', 'images fetched at once', '3')
  .option('--pin', 'pin the tags so that eviction keeps them')
  .action(async (refs: string[], options: CommonOptions & ConfigOverrides & ReferrersOptions & { file?: string; platform?: string; allPlatforms?: boolean; concurrency: string; pin?: boolean }) => {
    const images = imagesFrom(refs, options.file);
    const platforms = platformsFrom(options);
    const referrers = referrersFrom(options);
    const [{ default: cliProgress }, { prewarm }] = await Promise.all([import('cli-progress'), import('./airgap/prewarm.js')]);
    const mirror = await coreFor(options);
    const tty = process.stderr.isTTY === true;
    const multibar = tty
      ? new cliProgress.MultiBar(
          { format: ' {bar} {percentage}% | {value}/{total} | {speed} | ETA {eta_formatted} | {image}', formatValue: (v, _o, type) => (type === 'value' || type === 'total' ? formatBytes(v) : String(v)), hideCursor: true, clearOnComplete: false, stopOnComplete: false },
          cliProgress.Presets.shades_classic,
        )
      : undefined;
    const bars = new Map<string, InstanceType<typeof cliProgress.SingleBar>>();
    const started = new Map<string, number>();
    const done = new Map<string, number>();
    const overall = multibar?.create(1, 0, { image: 'all images', speed: '' });
    let overallTotal = 0;
    let overallDone = 0;
    const t0 = Date.now();
    const speed = (bytes: number, since: number) => `${formatBytes(bytes / Math.max(0.001, (Date.now() - since) / 1000))}/s`;
    const progress: PrewarmProgress = {
      onStart(image, total) {
        started.set(image, Date.now());
        done.set(image, 0);
        overallTotal += total;
        overall?.setTotal(Math.max(1, overallTotal));
        if (multibar) bars.set(image, multibar.create(Math.max(1, total), 0, { image, speed: '' }));
        else process.stderr.write(`prewarm: ${image}: ${formatBytes(total)} to check\n`);
      },
      onBytes(image, bytes) {
        const d = (done.get(image) ?? 0) + bytes;
        done.set(image, d);
        overallDone += bytes;
        bars.get(image)?.update(d, { image, speed: speed(d, started.get(image) ?? Date.now()) });
        overall?.update(overallDone, { image: 'all images', speed: speed(overallDone, t0) });
      },
      onDone(image, r) {
        bars.get(image)?.update(r.bytes, { image: `${image} ${r.ok ? 'done' : 'FAILED'}`, speed: speed(r.bytes, started.get(image) ?? Date.now()) });
        if (!multibar) process.stderr.write(`prewarm: ${image}: ${r.ok ? `ok, ${r.blobs} blobs, ${formatBytes(r.bytes)} (${formatBytes(r.fetchedBytes)} fetched) in ${(r.ms / 1000).toFixed(1)}s` : `FAILED: ${r.error}`}\n`);
      },
    };
    const results = await prewarm(mirror, images, { platforms, pin: !!options.pin, referrers, concurrency: Math.max(1, Number(options.concurrency) || 3) }, progress);
    multibar?.stop();
    await mirror.close();
    printTable(
      results.map((r) => ({
        image: r.canonical, status: r.ok ? 'ok' : 'FAILED', blobs: r.blobs, ...(referrers ? { referrers: r.referrers } : {}), size: formatBytes(r.bytes), fetched: formatBytes(r.fetchedBytes), seconds: (r.ms / 1000).toFixed(1),
      })),
      ['image', 'status', 'blobs', ...(referrers ? ['referrers'] : []), 'size', 'fetched', 'seconds'],
    );
    for (const r of results) {
      for (const d of r.dangling) process.stderr.write(`${r.canonical}: the upstream lists referrer ${d} but does not have it; left out\n`);
    }
    const failed = results.filter((r) => !r.ok);
    if (failed.length > 0) {
      process.stderr.write(`\n${failed.length} of ${results.length} images failed:\n`);
      for (const f of failed) process.stderr.write(`  ${f.image}: ${f.error}\n`);
      process.exitCode = 1;
    }
  });

withReferrersOptions(withConfigOptions(program.command('export').description('write images (the chosen platforms) as an OCI image layout archive, for carrying across an air gap')), 'carry')
  .argument('[images...]', 'references as users write them')
  .requiredOption('-o, --output <file>', 'the archive to write, e.g. bundle.tar')
  .option('-f, --file <file>', 'read more references from a file, one per line')
  .option('--platform <list>', 'platforms of multi-arch images to include (default: this machine\'s)')
  .option('--all-platforms', 'include every platform')
  .action(async (refs: string[], options: CommonOptions & ConfigOverrides & ReferrersOptions & { output: string; file?: string; platform?: string; allPlatforms?: boolean }) => {
    const images = imagesFrom(refs, options.file);
    const platforms = platformsFrom(options);
    const referrers = referrersFrom(options);
    const { exportBundle } = await import('./airgap/bundle.js');
    const mirror = await coreFor(options);
    try {
      const r = await exportBundle(mirror, images, { platforms, output: options.output, referrers });
      const carried = referrers ? `, ${r.referrers} referrers` : '';
      process.stdout.write(`wrote ${options.output}: ${images.length} images${carried}, ${r.references.length} references, ${r.blobs} objects, ${formatBytes(r.bytes)}\n`);
      for (const ref of r.references) process.stdout.write(`  ${ref}\n`);
      for (const d of r.dangling) process.stderr.write(`the upstream lists referrer ${d} but does not have it; left out\n`);
    } catch (err) {
      process.stderr.write(`mirror: export failed: ${(err as Error).message}\n`);
      process.exitCode = 1;
    } finally {
      await mirror.close();
    }
  });

withConfigOptions(program.command('import').description('verify an OCI image layout archive and add its content and tags (pinned) to the cache'))
  .argument('<bundle>', 'the archive written by mirror export (or any OCI layout tar with full reference names)')
  .action(async (bundle: string, options: CommonOptions & ConfigOverrides) => {
    const { importBundle } = await import('./airgap/bundle.js');
    const mirror = await coreFor(options);
    try {
      const r = await importBundle(mirror, bundle);
      process.stdout.write(`imported ${r.references.length} images: ${r.blobs} objects, ${formatBytes(r.bytes)} (${r.alreadyCached} already cached)\n`);
      for (const ref of r.references) process.stdout.write(`  ${ref} (pinned)\n`);
    } catch (err) {
      process.stderr.write(`mirror: import refused: ${(err as Error).message}\nnothing was added to the cache\n`);
      process.exitCode = 1;
    } finally {
      await mirror.close();
    }
  });

withConfigOptions(program.command('gc').description('evict least recently used content now (down to the low watermark, or --target) and report what was freed'))
  .option('--target <size>', 'evict until the cache holds at most this much, e.g. 10GiB (default: storage.lowWatermark × storage.maxSize)')
  .option('--json', 'print the report as JSON')
  .action(async (options: CommonOptions & { target?: string; json?: boolean }) => {
    const config = configFrom(options);
    let target: number | undefined;
    if (options.target !== undefined) {
      target = parseSize(options.target);
      if (target === undefined) {
        process.stderr.write(`mirror: --target "${options.target}" is not a size (e.g. 10GiB)\n`);
        process.exit(2);
      }
    }
    const { gcCache } = await import('./maintenance.js');
    await withCache(config, async (cache) => {
      report(options.json, await gcCache(cache, config, target), (r) =>
        process.stdout.write(
          `evicted ${r.evicted} objects, freed ${formatBytes(r.freedBytes)}; cache now ${formatBytes(r.usageAfter)} (was ${formatBytes(r.usageBefore)})` +
            `${r.missingRemoved ? `; forgot ${r.missingRemoved} index entries whose files were gone` : ''}\n`,
        ),
      );
    });
  });

withConfigOptions(program.command('verify').description('re-hash every stored object; remove corrupt ones and repair the index (exit 1 if anything was wrong)'))
  .option('--json', 'print the report as JSON')
  .action(
    onCache(async (cache, _config, options: { json?: boolean }) => {
      const { verifyCache } = await import('./maintenance.js');
      const r = await verifyCache(cache);
      report(options.json, r, () => {
        process.stdout.write(`checked ${r.checked} objects (${formatBytes(r.bytes)})\n`);
        for (const d of r.corrupt) process.stdout.write(`corrupt, removed: ${d}\n`);
        for (const d of r.missing) process.stdout.write(`indexed but missing on disk, forgotten: ${d}\n`);
        for (const d of r.adopted) process.stdout.write(`verified but not indexed, adopted: ${d}\n`);
        if (r.corrupt.length + r.missing.length === 0) process.stdout.write('all good\n');
      });
      if (r.corrupt.length + r.missing.length > 0) process.exitCode = 1;
    }),
  );

withConfigOptions(program.command('ls').description('list cached repositories and tags with their sizes and when they were last pulled'))
  .argument('[repository]', 'only this repository, as users write it: alpine, docker.io/library/alpine, ghcr.io/org/app')
  .option('--json', 'print JSON')
  .action(async (repository: string | undefined, options: CommonOptions & { json?: boolean }) => {
    const upstreamName = options.upstream && !options.upstream.includes('://') ? options.upstream : undefined;
    const config = configFrom(options);
    let upstream = upstreamName;
    let repo: string | undefined;
    if (repository) {
      const slash = repository.indexOf('/');
      const first = slash > 0 ? repository.slice(0, slash) : '';
      const named = config.upstreams.find((u) => u.name === first || u.alias === first);
      const u = named ?? config.upstreams.find((x) => x.name === (upstream ?? config.defaultUpstream));
      if (!u) {
        process.stderr.write(`mirror: no upstream named ${upstream}\n`);
        process.exit(2);
      }
      upstream = u.name;
      repo = new UpstreamRegistry(u).canonicalRepository(named ? repository.slice(slash + 1) : repository);
    }
    await withCache(config, async (cache) => {
      report(options.json, cache.index.listTagsDetailed(upstream, repo), (rows) => {
        if (rows.length === 0) {
          process.stdout.write('nothing cached\n');
          return;
        }
        printTable(
          rows.map((r) => ({
            repository: `${r.upstream}/${r.repo}`,
            tag: r.tag + (r.pinned ? ' (pinned)' : ''),
            digest: r.digest.slice(0, 19),
            size: formatBytes(r.bytes),
            fetched: ago(r.fetchedAt),
            'last pulled': ago(r.lastPull),
          })),
          ['repository', 'tag', 'digest', 'size', 'fetched', 'last pulled'],
        );
      });
    });
  });

withConfigOptions(program.command('stats').description('cache objects, bytes, hit ratio and the busiest repositories'))
  .option('--json', 'print JSON')
  .action(
    onCache(async (cache, config, options: { json?: boolean }) => {
      const { statsOf } = await import('./maintenance.js');
      report(options.json, statsOf(cache), (s) => {
        const cap = config.storage.maxSize > 0 ? ` of ${formatBytes(config.storage.maxSize)}` : '';
        process.stdout.write(
          `objects:    ${s.objects} (${s.blobs} blobs, ${s.manifests} manifests)\n` +
            `stored:     ${formatBytes(s.bytes)}${cap}\n` +
            `requests:   ${s.requests}, hit ratio ${s.hitRatio === undefined ? '-' : `${(s.hitRatio * 100).toFixed(1)}%`}\n` +
            `served:     ${formatBytes(s.bytesFromCache)} from cache, ${formatBytes(s.bytesFromUpstream)} from upstreams\n`,
        );
        if (s.topRepositories.length > 0) {
          process.stdout.write('\n');
          printTable(
            s.topRepositories.map((r) => ({ repository: `${r.upstream}/${r.repo}`, pulls: r.pulls, served: formatBytes(r.bytes), 'last pulled': ago(r.lastPull) })),
            ['repository', 'pulls', 'served', 'last pulled'],
          );
        }
      });
    }),
  );

withConfigOptions(
  program
    .command('client-config')
    .description('print ready-to-use client configuration for this mirror')
    .addArgument(new Argument('<client>', 'the client to configure').choices(['docker', 'containerd', 'podman']))
    .requiredOption('--url <url>', 'the URL clients reach the mirror at, e.g. http://mirror.example:5000')
    .option('-o, --output-dir <dir>', 'write the files under this directory (same layout as their paths) instead of printing them'),
).action((client: ClientKind, options: CommonOptions & { url: string; outputDir?: string }) => {
  const config = configFrom(options);
  let url: URL;
  try {
    url = new URL(options.url);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('scheme');
  } catch {
    process.stderr.write(`mirror: --url must be an http(s) URL, got "${options.url}"\n`);
    process.exit(2);
  }
  for (const file of clientConfig(client, url.href, config)) {
    if (options.outputDir) {
      // Drop the system prefix: /etc/containerd/certs.d/docker.io/hosts.toml -> <dir>/docker.io/hosts.toml
      const relative = file.path.replace(/^\/etc\/(containerd\/certs\.d|docker|containers(\/registries\.conf\.d)?)\//, '');
      const target = join(options.outputDir, relative);
      mkdirSync(dirname(target), { recursive: true });
      writeFileSync(target, file.content);
      process.stdout.write(`wrote ${target}\n`);
    } else {
      process.stdout.write(`# ${file.path}\n${file.content}\n`);
    }
  }
});

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`mirror: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
