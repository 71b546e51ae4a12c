// `mirror client-config docker|containerd|podman --url URL`: ready-to-use client settings
// for every configured upstream.

import type { Config } from './config.js';

export type ClientKind = 'docker' | 'containerd' | 'podman';

export interface ConfigFile {
  /** Where the file goes on a client machine. */
  path: string;
  content: string;
}

/** The public API host clients know an upstream by (docker.io's API is registry-1.docker.io). */
function serverUrl(name: string, url: string): string {
  return name === 'docker.io' ? 'https://registry-1.docker.io' : url.startsWith('http') && new URL(url).host === name ? url : `https://${name}`;
}

function isLoopback(host: string): boolean {
  return /^(127\.|localhost$|\[::1\]$)/.test(host);
}

export function clientConfig(kind: ClientKind, mirrorUrl: string, config: Config): ConfigFile[] {
  const url = new URL(mirrorUrl);
  const base = `${url.protocol}//${url.host}`;
  const insecure = url.protocol === 'http:';
  switch (kind) {
    case 'docker': {
      // dockerd uses registry-mirrors for Docker Hub images only.
      const daemon: Record<string, unknown> = { 'registry-mirrors': [base] };
      if (insecure && !isLoopback(url.hostname)) daemon['insecure-registries'] = [url.host];
      return [{ path: '/etc/docker/daemon.json', content: `${JSON.stringify(daemon, null, 2)}\n` }];
    }
    case 'containerd':
      // containerd adds ?ns=<host> to every mirror request: one hosts.toml per upstream.
      return config.upstreams.map((u) => ({
        path: `/etc/containerd/certs.d/${u.name}/hosts.toml`,
        content: [
          `# ${u.name} through registry-mirror; containerd's config.toml needs`,
          `#   [plugins."io.containerd.grpc.v1.cri".registry] config_path = "/etc/containerd/certs.d"`,
          `# (ctr: --hosts-dir /etc/containerd/certs.d)`,
          `server = "${serverUrl(u.name, u.url)}"`,
          '',
          `[host."${base}"]`,
          '  capabilities = ["pull", "resolve"]',
          '',
        ].join('\n'),
      }));
    case 'podman': {
      const blocks = config.upstreams.map((u) => {
        // The default upstream is served at the root; others by their host as a path prefix.
        const location = u.name === config.defaultUpstream ? url.host : `${url.host}/${u.name}`;
        return [
          '[[registry]]',
          `prefix = "${u.name}"`,
          `location = "${u.name}"`,
          '',
          '[[registry.mirror]]',
          `location = "${location}"`,
          ...(insecure ? ['insecure = true'] : []),
          '',
        ].join('\n');
      });
      return [{ path: '/etc/containers/registries.conf.d/registry-mirror.conf', content: `# registry-mirror for podman, CRI-O, skopeo and buildah\n${blocks.join('\n')}` }];
    }
  }
}
