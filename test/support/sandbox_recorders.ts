/**
 * The sandbox's recorders (run inside it by agent_sandbox_driver.ts): a DNS server that
 * answers every query NXDOMAIN, and listeners that accept connections to any outside
 * address and note where they went. Node built-ins only, like the driver.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import type { DnsQuery, OutboundConnection } from './agent_sandbox.js';

const typeNames: Record<number, string> = {
  1: 'A',
  2: 'NS',
  5: 'CNAME',
  6: 'SOA',
  12: 'PTR',
  15: 'MX',
  16: 'TXT',
  28: 'AAAA',
  33: 'SRV',
  64: 'SVCB',
  65: 'HTTPS',
  255: 'ANY',
};

/** The first question of a DNS message, or null when it is not one. */
function parseQuestion(msg: Buffer): { name: string; type: string; end: number } | null {
  if (msg.length < 12 || msg.readUInt16BE(4) < 1) return null;
  const labels: string[] = [];
  let p = 12;
  for (;;) {
    const len = msg[p];
    if (len === undefined || len & 0xc0) return null;
    if (len === 0) break;
    labels.push(msg.toString('latin1', p + 1, p + 1 + len));
    p += 1 + len;
  }
  p += 1;
  if (p + 4 > msg.length) return null;
  const code = msg.readUInt16BE(p);
  return { name: labels.join('.').toLowerCase(), type: typeNames[code] ?? `TYPE${code}`, end: p + 4 };
}

/** Records the query and answers NXDOMAIN (FORMERR for what is not a query), echoing the question. */
function answerDns(msg: Buffer, dnsQueries: DnsQuery[]): Buffer | null {
  if (msg.length < 12) return null;
  const q = parseQuestion(msg);
  dnsQueries.push(q ? { name: q.name, type: q.type } : { name: '(unparsable)', type: '?' });
  const head = Buffer.alloc(12);
  msg.copy(head, 0, 0, 2);
  head[2] = 0x80 | (msg[2] & 0x79); // QR, the query's opcode and RD
  head[3] = 0x80 | (q ? 3 : 1); // RA, NXDOMAIN or FORMERR
  if (!q) return head;
  head.writeUInt16BE(1, 4);
  return Buffer.concat([head, msg.subarray(12, q.end)]);
}

/** Listens on every address (dual-stack), falling back to IPv4 when IPv6 is off. */
export async function listenAny(server: net.Server, port: number): Promise<void> {
  const attempt = (opts: net.ListenOptions) =>
    new Promise<void>((res, rej) => {
      server.once('error', rej);
      server.listen(opts, () => (server.off('error', rej), res()));
    });
  try {
    await attempt({ host: '::', port, ipv6Only: false });
  } catch {
    await attempt({ host: '0.0.0.0', port });
  }
}

/** A DNS server on port 53 of every address (UDP and TCP) that records each query in `dnsQueries` and answers NXDOMAIN. */
export async function startDnsRecorder(dnsQueries: DnsQuery[]): Promise<() => void> {
  // Bound on every address, so a client that brings its own resolver (8.8.8.8) is recorded too.
  let udp = dgram.createSocket({ type: 'udp6', ipv6Only: false });
  await new Promise<void>((res, rej) => (udp.once('error', rej), udp.bind(53, '::', () => res()))).catch(async () => {
    udp.close();
    udp = dgram.createSocket('udp4');
    await new Promise<void>((res, rej) => (udp.once('error', rej), udp.bind(53, '0.0.0.0', () => res())));
  });
  udp.on('message', (msg, rinfo) => {
    const reply = answerDns(msg, dnsQueries);
    if (reply) udp.send(reply, rinfo.port, rinfo.address);
  });
  udp.on('error', () => {});
  // DNS over TCP: each message is prefixed with its 2-byte length.
  const tcp = net.createServer((sock) => {
    let buf = Buffer.alloc(0);
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const reply = answerDns(buf.subarray(2, 2 + buf.readUInt16BE(0)), dnsQueries);
        buf = buf.subarray(2 + buf.readUInt16BE(0));
        if (reply) sock.write(Buffer.concat([Buffer.from([reply.length >> 8, reply.length & 0xff]), reply]));
      }
    });
    sock.on('error', () => {});
  });
  await listenAny(tcp, 53);
  return () => (udp.close(), tcp.close());
}

/** The server name of a TLS ClientHello: undefined when there is none, null when more bytes are needed. */
function parseSni(buf: Buffer): string | undefined | null {
  if (buf.length < 5) return null;
  if (buf[0] !== 0x16) return undefined;
  const end = 5 + buf.readUInt16BE(3);
  if (buf.length < end) return null;
  try {
    let p = 5;
    if (buf[p] !== 1) return undefined; // not a client_hello
    p += 4 + 2 + 32; // handshake header, version, random
    p += 1 + buf[p]; // session id
    p += 2 + buf.readUInt16BE(p); // cipher suites
    p += 1 + buf[p]; // compression methods
    const extEnd = Math.min(end, p + 2 + buf.readUInt16BE(p));
    p += 2;
    while (p + 4 <= extEnd) {
      const type = buf.readUInt16BE(p);
      const len = buf.readUInt16BE(p + 2);
      p += 4;
      if (type === 0) {
        for (let q = p + 2; q + 3 <= p + len; q += 3 + buf.readUInt16BE(q + 1)) {
          if (buf[q] === 0) return buf.toString('latin1', q + 3, q + 3 + buf.readUInt16BE(q + 1));
        }
      }
      p += len;
    }
  } catch {
    // A truncated or odd ClientHello: no name, the connection is still recorded.
  }
  return undefined;
}

const isLoopback = (a: string) => a.startsWith('127.') || a === '::1';

/** Accepts connections to non-loopback addresses on `port`, records destination, SNI or Host, then closes them. */
export async function startConnectionRecorder(port: number, outboundConnections: OutboundConnection[]): Promise<net.Server | null> {
  const server = net.createServer((sock) => {
    const address = (sock.localAddress ?? '').replace(/^::ffff:/, '');
    sock.on('error', () => {});
    if (isLoopback(address)) return void sock.destroy();
    const rec: OutboundConnection = { address, port: sock.localPort ?? port };
    outboundConnections.push(rec);
    let buf = Buffer.alloc(0);
    const done = () => sock.destroy();
    // A client that waits for the server to speak first gets closed after a moment.
    const timer = setTimeout(done, 2000);
    sock.on('close', () => clearTimeout(timer));
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf[0] === 0x16) {
        const sni = parseSni(buf);
        if (sni === null && buf.length < 65_536) return;
        if (sni) rec.sni = sni;
      } else {
        const head = buf.toString('latin1');
        if (!head.includes('\r\n\r\n') && buf.length < 16_384) return;
        const host = /\r\nhost:[ \t]*([^\r\n]*)/i.exec(head)?.[1]?.trim();
        if (host) rec.host = host;
      }
      done();
    });
  });
  try {
    await listenAny(server, port);
    return server;
  } catch (err) {
    process.stderr.write(`agent sandbox: cannot record port ${port}: ${(err as Error).message}\n`);
    return null;
  }
}
