#!/usr/bin/env node
// The `mirror` command. `serve` runs the mirror; later commands (prewarm, export, import,
// gc, verify, ls, stats, client-config) share the same configuration options.

import { Argument, Command, Option } from 'commander';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { clientConfig, type ClientKind } from './client-config.js';
import { ConfigError, loadConfig, type Config, type ConfigOverrides } from './config.js';
import { createLogger } from './log.js';
import { createMirror } from './mirror.js';
import { startServer } from './server/app.js';

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
    .addOption(
      new Option('--log-level <level>', 'log level (env MIRROR_LOG_LEVEL)').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
    );
}

function configFrom(options: CommonOptions & ConfigOverrides): Config {
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
  const logger = createLogger(config.log.level);
  const mirror = await createMirror({ config, logger });
  const server = await startServer(mirror);
  logger.info(
    {
      url: server.url,
      listen: `${config.listen.host}:${config.listen.port}`,
      storage: config.storage.path,
      offline: config.offline,
      upstreams: config.upstreams.map((u) => ({ name: u.name, url: u.url, ttlMs: u.ttlMs, authenticated: !!u.username })),
      defaultUpstream: config.defaultUpstream,
    },
    'mirror listening',
  );
  logger.flush();

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) {
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
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGHUP', () => {
    try {
      server.reloadTls();
      logger.info('TLS certificate reloaded');
    } catch (err) {
      logger.error({ err }, 'TLS reload failed; keeping the old certificate');
    }
  });
}

const program = new Command();
program.name('mirror').description('A pull-through caching container registry mirror').version('0.1.0');

withConfigOptions(
  program
    .command('serve')
    .description('serve the Registry v2 pull API from the cache, falling through to the upstreams')
    .option('--listen <host:port>', 'address to listen on (env MIRROR_LISTEN; default 0.0.0.0:5000)')
    .option('-p, --port <port>', 'port to listen on, keeping the configured host (env MIRROR_PORT)')
    .option('--offline', 'never contact an upstream; serve only what is cached (env MIRROR_OFFLINE)'),
).action((options: CommonOptions & ConfigOverrides) => serve(options));

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
