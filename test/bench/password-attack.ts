// A child process of the bench: N clients sending wrong passwords to `/v2/` for D seconds,
// each as soon as its previous one is answered, every password different (so no cache of
// failed headers helps). Reports the request count and the statuses to its parent.
import { Agent, request } from 'undici';

const [url, clientsArg, secondsArg] = process.argv.slice(2);
const clients = Number(clientsArg);
const until = Date.now() + Number(secondsArg) * 1000;
const agent = new Agent({ connections: clients });
const statuses: Record<string, number> = {};
let requests = 0;
let n = 0;

async function attacker(): Promise<void> {
  while (Date.now() < until) {
    const password = `wrong-${process.pid}-${++n}`;
    const authorization = `Basic ${Buffer.from(`bench:${password}`).toString('base64')}`;
    try {
      const res = await request(`${url}/v2/`, { headers: { authorization }, dispatcher: agent });
      await res.body.dump();
      statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1;
    } catch (err) {
      const key = (err as { code?: string }).code ?? 'error';
      statuses[key] = (statuses[key] ?? 0) + 1;
    }
    requests++;
  }
}

await Promise.all(Array.from({ length: clients }, attacker));
await agent.close();
process.send!({ requests, statuses });
process.disconnect();
