#!/usr/bin/env node
// Publish ficha events from JSON lines, speaking the NATS client protocol over a plain TCP
// socket: no npm package, Node.js 20 standard library only.
//
//   node publish.mjs nats://127.0.0.1:4222 events.jsonl
//   node publish.mjs nats://producer-acme:SECRET@nats:4222 --inbox-prefix _INBOX_acme < events.jsonl
//
// One event per input line (a JSON object as ficha's contract describes it). Each is
// published to ficha.in.<tenant>.<type>, read from the event, with the header
// Nats-Msg-Id = event_id and a reply subject on which JetStream answers with its PubAck.
// One JSON line is printed per event:
//   {"line":1,"event_id":"web-1","subject":"ficha.in.acme.form_submitted","stream":"FICHA_IN","seq":7,"duplicate":false}
//   {"line":2,"event_id":"web-2","subject":"...","error":"..."}
// and the exit status is 1 if any event was not stored (2 for a wrong command line).
//
// A PubAck means the event is stored in FICHA_IN: from then on ficha applies it exactly
// once, or dead-letters it on ficha.dlq.<tenant>.<type> if it breaks the contract. Running
// the same file again is safe: ficha applies each (tenant, event_id) once, for ever.
//
// This is an example for integrators; a real service would rather use its language's NATS
// client (e.g. nats.js: js.publish(subject, body, { msgID: eventId })). It publishes one
// event at a time; a client keeps a window of publishes in flight for throughput.
// Protocol reference: https://docs.nats.io/reference/reference-protocols/nats-protocol

import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import net from 'node:net';
import readline from 'node:readline';
import { parseArgs } from 'node:util';

const CRLF = '\r\n';
const TENANT = /^[a-z0-9][a-z0-9_-]{0,62}$/; // the contract's <tenant> token
const TYPE = /^[a-z0-9_]+$/; // event types are snake_case, no dots

// ------------------------------------------------------------------- the NATS connection

class NatsError extends Error {}
class NatsTimeout extends NatsError {}

class NatsConnection {
  #socket;
  #buffer = Buffer.alloc(0); // bytes received and not parsed yet (TCP splits frames anywhere)
  #message = null; // the MSG/HMSG whose payload we are waiting for
  #inbox; // replies arrive on <inbox>.<n>, one wildcard subscription for all of them
  #nextReply = 0;
  #pending = new Map(); // reply token -> {resolve, reject, timer}
  #handshake = null; // {resolve, reject, url, greeted} until the first PONG
  #closed = false;
  info = null; // the server's INFO: max_payload, headers, ...

  static connect(url, { inboxPrefix = '_INBOX', timeoutMs = 5000 } = {}) {
    const conn = new NatsConnection();
    return conn.#open(new URL(url.includes('://') ? url : `nats://${url}`), inboxPrefix,
      timeoutMs);
  }

  #open(url, inboxPrefix, timeoutMs) {
    this.#inbox = `${inboxPrefix}.${randomBytes(8).toString('hex')}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.#fail(new NatsError(
        `no answer from NATS at ${url.host} within ${timeoutMs} ms`)), timeoutMs);
      this.#handshake = {
        resolve: () => { clearTimeout(timer); resolve(this); },
        reject: (error) => { clearTimeout(timer); reject(error); },
        url,
      };
      this.#socket = net.connect({ host: url.hostname, port: Number(url.port || 4222) });
      this.#socket.on('data', (chunk) => this.#receive(chunk));
      this.#socket.on('error', (error) => this.#fail(new NatsError(
        `cannot reach NATS at ${url.host}: ${error.message}`)));
      this.#socket.on('close', () => this.#fail(new NatsError('the NATS connection closed')));
    });
  }

  // The server speaks first (INFO); we answer CONNECT, subscribe to our inbox, and PING:
  // its PONG tells us the server accepted all of it (or an -ERR arrives, e.g. bad password).
  #greet(info) {
    const url = this.#handshake.url;
    if (info.tls_required) {
      return this.#fail(new NatsError('the server requires TLS, which this example does not speak'));
    }
    if (!info.headers) {
      return this.#fail(new NatsError('the server does not support headers (Nats-Msg-Id needs them)'));
    }
    const options = {
      verbose: false, pedantic: false, lang: 'node-raw', version: '1.0.0', protocol: 1,
      headers: true, // we send HPUB (a message with headers)
      no_responders: true, // a publish nobody listens to is answered at once with status 503
    };
    if (url.username && url.password) {
      options.user = decodeURIComponent(url.username);
      options.pass = decodeURIComponent(url.password);
    } else if (url.username) {
      options.auth_token = decodeURIComponent(url.username);
    }
    this.#write(`CONNECT ${JSON.stringify(options)}${CRLF}SUB ${this.#inbox}.* 1${CRLF}PING${CRLF}`);
  }

  // Publish with headers and wait for the one reply: {status, headers, payload}.
  request(subject, headers, body, timeoutMs) {
    if (this.#closed) return Promise.reject(new NatsError('the NATS connection is closed'));
    const token = String(++this.#nextReply);
    let head = `NATS/1.0${CRLF}`;
    for (const [name, value] of Object.entries(headers)) head += `${name}: ${value}${CRLF}`;
    const headBytes = Buffer.from(head + CRLF, 'utf8');
    const size = headBytes.length + body.length;
    if (size > this.info.max_payload) {
      return Promise.reject(new NatsError(
        `${size} bytes is over the server's max_payload of ${this.info.max_payload}`));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(token);
        reject(new NatsTimeout(`no PubAck within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(token, { resolve, reject, timer });
      // HPUB <subject> <reply-to> <header bytes> <total bytes>\r\n<headers><payload>\r\n
      this.#socket.write(Buffer.concat([
        Buffer.from(`HPUB ${subject} ${this.#inbox}.${token} ${headBytes.length} ${size}${CRLF}`),
        headBytes, body, Buffer.from(CRLF)]));
    });
  }

  close() {
    this.#closed = true;
    this.#socket?.end();
  }

  #write(text) {
    this.#socket.write(text);
  }

  #receive(chunk) {
    this.#buffer = this.#buffer.length ? Buffer.concat([this.#buffer, chunk]) : chunk;
    for (;;) {
      if (this.#message) { // waiting for a payload and its trailing CRLF
        const { size } = this.#message;
        if (this.#buffer.length < size + 2) return;
        const payload = this.#buffer.subarray(0, size);
        this.#buffer = this.#buffer.subarray(size + 2);
        const message = this.#message;
        this.#message = null;
        this.#deliver(message, payload);
        continue;
      }
      const end = this.#buffer.indexOf(CRLF);
      if (end < 0) return; // the control line is not complete yet
      const line = this.#buffer.subarray(0, end).toString('utf8');
      this.#buffer = this.#buffer.subarray(end + 2);
      this.#control(line);
    }
  }

  #control(line) {
    const [op] = line.split(' ', 1);
    const args = line.slice(op.length).trim().split(/\s+/);
    switch (op.toUpperCase()) {
      case 'INFO':
        this.info = JSON.parse(line.slice(op.length));
        if (this.#handshake && !this.#handshake.greeted) {
          this.#handshake.greeted = true;
          this.#greet(this.info);
        }
        return;
      case 'PING':
        this.#write(`PONG${CRLF}`); // unanswered PINGs make the server drop us
        return;
      case 'PONG':
        if (this.#handshake) {
          const { resolve } = this.#handshake;
          this.#handshake = null;
          resolve();
        }
        return;
      case '+OK':
        return;
      case '-ERR':
        // Permissions violations leave the connection open; everything else closes it.
        this.#fail(new NatsError(`NATS refused: ${args.join(' ').replace(/^'|'$/g, '')}`),
          /permissions violation/i.test(line));
        return;
      case 'MSG': // MSG <subject> <sid> [reply-to] <bytes>
        this.#message = { subject: args[0], headerSize: 0, size: Number(args.at(-1)) };
        return;
      case 'HMSG': // HMSG <subject> <sid> [reply-to] <header bytes> <total bytes>
        this.#message = { subject: args[0], headerSize: Number(args.at(-2)),
          size: Number(args.at(-1)) };
        return;
      default:
        this.#fail(new NatsError(`unexpected line from the server: ${line}`));
    }
  }

  #deliver({ subject, headerSize }, data) {
    const token = subject.slice(this.#inbox.length + 1);
    const waiter = this.#pending.get(token);
    if (!waiter) return; // a reply that came after its timeout
    this.#pending.delete(token);
    clearTimeout(waiter.timer);
    // Headers: "NATS/1.0[ <status>[ <description>]]\r\nName: value\r\n...\r\n\r\n"
    const [statusLine, ...lines] = data.subarray(0, headerSize).toString('utf8').split(CRLF);
    const headers = {};
    for (const header of lines) {
      const colon = header.indexOf(':');
      if (colon > 0) headers[header.slice(0, colon)] = header.slice(colon + 1).trim();
    }
    const status = headerSize ? Number(statusLine.split(' ')[1]) || 0 : 0;
    waiter.resolve({ status, headers, payload: data.subarray(headerSize) });
  }

  // Fail the handshake and every waiting request; `keepOpen` for errors that concern only
  // the request in flight (the server keeps the connection).
  #fail(error, keepOpen = false) {
    if (this.#handshake) { // a connection refused while greeting is of no use
      const { reject } = this.#handshake;
      this.#handshake = null;
      keepOpen = false;
      reject(error);
    }
    for (const { reject, timer } of this.#pending.values()) {
      clearTimeout(timer);
      reject(error);
    }
    this.#pending.clear();
    if (!keepOpen && !this.#closed) {
      this.#closed = true;
      this.#socket.destroy();
    }
  }

  get closed() {
    return this.#closed;
  }
}

// ---------------------------------------------------------------------- ficha's contract

// The subject and Nats-Msg-Id of an event, or the reason we cannot even frame it. Whether
// the event is valid is ficha's call: an invalid one is stored, then dead-lettered.
function frame(line) {
  let event;
  try {
    event = JSON.parse(line);
  } catch (error) {
    return { error: `not JSON: ${error.message}` };
  }
  if (event === null || typeof event !== 'object' || Array.isArray(event)) {
    return { error: 'not a JSON object' };
  }
  const { tenant, type, event_id: eventId } = event;
  if (typeof eventId !== 'string' || eventId === '' || /[\r\n]/.test(eventId)) {
    return { error: 'event_id must be a non-empty string (it becomes the Nats-Msg-Id header)' };
  }
  if (typeof tenant !== 'string' || !TENANT.test(tenant)) {
    return { eventId, error: `tenant ${JSON.stringify(tenant)} does not match ${TENANT}` };
  }
  if (typeof type !== 'string' || !TYPE.test(type)) {
    return { eventId, error: `type ${JSON.stringify(type)} is not a snake_case event type` };
  }
  return { eventId, subject: `ficha.in.${tenant}.${type}` };
}

// Publish one event until JetStream answers. A timeout or "no responders" (FICHA_IN does
// not exist yet: ficha never started on this server) is retried with the same
// Nats-Msg-Id, so a retry of a publish that was in fact stored is not stored twice.
async function publish(nats, subject, eventId, body, { timeoutMs, retries }) {
  for (let attempt = 0; ; attempt++) {
    let reply;
    try {
      reply = await nats.request(subject, { 'Nats-Msg-Id': eventId }, body, timeoutMs);
    } catch (error) {
      if (!(error instanceof NatsTimeout) || nats.closed || attempt >= retries) throw error;
      await sleep(250 * 2 ** attempt);
      continue;
    }
    if (reply.status === 503) {
      if (attempt >= retries) {
        throw new NatsError(`no JetStream stream takes ${subject} (start ficha once: it creates FICHA_IN)`);
      }
      await sleep(250 * 2 ** attempt);
      continue;
    }
    const ack = JSON.parse(reply.payload.toString('utf8') || '{}');
    if (ack.error) { // e.g. {"error":{"code":400,"err_code":10054,"description":"..."}}
      throw new NatsError(`JetStream refused: ${ack.error.description ?? JSON.stringify(ack.error)}`);
    }
    if (typeof ack.seq !== 'number') {
      throw new NatsError(`not a PubAck (status ${reply.status}): ${reply.payload}`);
    }
    return { stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate === true };
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------- the command

const USAGE = 'usage: node publish.mjs <nats-url> [events.jsonl|-] '
  + '[--inbox-prefix _INBOX] [--timeout SECONDS] [--retries N]';

async function main() {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        'inbox-prefix': { type: 'string', default: '_INBOX' },
        timeout: { type: 'string', default: '5' },
        retries: { type: 'string', default: '3' },
      },
    });
  } catch (error) {
    console.error(`${error.message}\n${USAGE}`);
    return 2;
  }
  const [url, path = '-'] = parsed.positionals;
  const timeoutMs = Number(parsed.values.timeout) * 1000;
  const retries = Number(parsed.values.retries);
  if (!url || parsed.positionals.length > 2 || !(timeoutMs > 0) || !(retries >= 0)) {
    console.error(USAGE);
    return 2;
  }

  let nats;
  try {
    nats = await NatsConnection.connect(url, {
      inboxPrefix: parsed.values['inbox-prefix'], timeoutMs });
  } catch (error) {
    console.error(error.message);
    return 1;
  }

  const input = path === '-' ? process.stdin : createReadStream(path);
  let failed = 0;
  let lineNumber = 0;
  try {
    for await (const raw of readline.createInterface({ input, crlfDelay: Infinity })) {
      lineNumber++;
      const line = raw.trim();
      if (!line) continue;
      const { subject, eventId, error } = frame(line);
      const report = { line: lineNumber, event_id: eventId ?? null, subject: subject ?? null };
      if (error) {
        failed++;
        console.log(JSON.stringify({ ...report, error }));
        continue;
      }
      try {
        // The line is published as it was written: ficha reads the producer's own bytes.
        const ack = await publish(nats, subject, eventId, Buffer.from(line, 'utf8'),
          { timeoutMs, retries });
        console.log(JSON.stringify({ ...report, ...ack }));
      } catch (publishError) {
        failed++;
        console.log(JSON.stringify({ ...report, error: publishError.message }));
        if (nats.closed) {
          console.error(`stopped at line ${lineNumber}: ${publishError.message}; `
            + 'running the same input again is safe (each event_id is applied once)');
          return 1;
        }
      }
    }
  } catch (readError) {
    console.error(`cannot read ${path}: ${readError.message}`);
    return 1;
  } finally {
    nats.close();
  }
  return failed ? 1 : 0;
}

process.exitCode = await main();
