/**
 * Client-side load balancing over several gateway replicas: gRPC's round_robin and
 * pick_first policies, for the Connect transport.
 *
 * Connect-ES has no load-balancing policies of its own (one transport talks to one
 * base URL), so this module does what a gRPC channel does: it resolves the target to
 * addresses (`ipv4:`/`ipv6:` lists, or every A/AAAA record of a DNS name, re-resolved
 * every 30 s like gRPC's DNS resolver), keeps one Connect transport (one HTTP/2
 * connection) per address, and picks one per call: in turn (round_robin) or the first
 * one up (pick_first). An address whose connection failed, or whose gateway refused a
 * call because it is shutting down, is left out for a while (gRPC's reconnect backoff:
 * 1 s, times 1.6 per failure, at most 120 s). Such a call never reached a gateway that
 * ran it, so it is sent once more to the next address; any other failure (the gateway
 * answered, or the connection broke after the call was sent) is the caller's, as in gRPC.
 */
import type { DescMessage, DescMethodStreaming, DescMethodUnary, MessageInitShape } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ContextValues,
  type StreamResponse,
  type Transport,
  type UnaryResponse,
} from "@connectrpc/connect";
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";

import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** gRPC's load-balancing policies: calls rotated over every address, or all on the first one up. */
export type LoadBalancingPolicy = "round_robin" | "pick_first";

/** One address of the target, with its own connection. */
export interface Endpoint {
  readonly transport: Transport;
  /** Drops the connection; calls in flight on it fail. */
  close(): void;
}

/** Builds the transport of one address ("http://10.0.0.1:50051"). */
export type EndpointFactory = (url: URL) => Endpoint;

/** A target split into what to resolve: a fixed list of host:port, or one DNS name. */
export type ParsedTarget = { kind: "static"; addresses: string[] } | { kind: "dns"; host: string; port: string };

/** Port of an address given without one, as in gRPC's naming (https). */
const DEFAULT_PORT = "443";
/** How often a DNS name is resolved again (gRPC's minimum time between resolutions). */
export const DNS_REFRESH_MS = 30_000;
/** gRPC's connection backoff: first delay, multiplier, cap. */
const BACKOFF_INITIAL_MS = 1_000;
const BACKOFF_MULTIPLIER = 1.6;
const BACKOFF_MAX_MS = 120_000;
/** The ErrorInfo reason of a call a draining gateway refused before running it. */
const SHUTTING_DOWN = "SHUTTING_DOWN";
const ERROR_DOMAIN = "gpt-grpc";

/**
 * Errors of calls that never reached a gateway (no connection could be made): filled in by
 * the client's connection-failure interceptor, read here to decide whether a call may go to
 * another address.
 */
export const neverSent = new WeakSet<object>();

function splitHostPort(part: string, target: string): { host: string; port: string } {
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(part);
  if (bracketed) return { host: bracketed[1]!, port: bracketed[2] ?? DEFAULT_PORT };
  const colon = part.lastIndexOf(":");
  if (colon >= 0 && part.indexOf(":") === colon) {
    const port = part.slice(colon + 1);
    if (!/^\d+$/.test(port)) throw new Error(`gpt-grpc: bad port in ${JSON.stringify(part)} (target ${target})`);
    return { host: part.slice(0, colon), port };
  }
  return { host: part, port: DEFAULT_PORT };
}

function joinHostPort(host: string, port: string): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * Parses gRPC's target forms: "ipv4:10.0.0.1:50051,10.0.0.2:50051", "ipv6:[::1]:50051"
 * (or "ipv6:::1"), "dns:///gateway.internal:50051" (or "dns:gateway:50051"), and a plain
 * "host:port", which gRPC resolves with DNS too. A missing port is 443.
 */
export function parseTarget(target: string): ParsedTarget {
  const scheme = /^(ipv4|ipv6|dns):(.*)$/.exec(target);
  if (scheme && scheme[1] !== "dns") {
    const family = scheme[1] === "ipv4" ? 4 : 6;
    const list = scheme[2]!.replace(/^\/\//, "");
    const addresses = list.split(",").map((part) => {
      const { host, port } =
        family === 6 && !part.startsWith("[") ? { host: part, port: DEFAULT_PORT } : splitHostPort(part, target);
      if (isIP(host) !== family) throw new Error(`gpt-grpc: ${JSON.stringify(host)} is not an IPv${family} address (target ${target})`);
      return joinHostPort(host, port);
    });
    return { kind: "static", addresses };
  }
  let name = target;
  if (scheme) {
    const dns = /^(?:\/\/([^/]*)\/)?(.+)$/.exec(scheme[2]!);
    if (!dns) throw new Error(`gpt-grpc: bad dns target ${target}`);
    if (dns[1]) throw new Error(`gpt-grpc: a DNS server in the target (dns://${dns[1]}/...) is not supported; use the system resolver (dns:///name:port)`);
    name = dns[2]!;
  }
  const { host, port } = splitHostPort(name, target);
  if (!host) throw new Error(`gpt-grpc: no host in target ${target}`);
  return isIP(host) ? { kind: "static", addresses: [joinHostPort(host, port)] } : { kind: "dns", host, port };
}

interface Slot {
  address: string;
  endpoint: Endpoint;
  /** Consecutive failures (connection failed, or the gateway was shutting down). */
  failures: number;
  /** Left out of the rotation until then (ms since epoch). */
  downUntil: number;
  inFlight: number;
  retired: boolean;
}

/** Whether a failed call never ran on a gateway, so that another replica may take it. */
function mayGoElsewhere(err: unknown): boolean {
  if (typeof err === "object" && err !== null && neverSent.has(err)) return true;
  if (!(err instanceof ConnectError) || err.code !== Code.Unavailable) return false;
  return err.findDetails(ErrorInfoSchema).some((info) => info.domain === ERROR_DOMAIN && info.reason === SHUTTING_DOWN);
}

/** A Connect transport that spreads calls over the addresses of a target. */
export class BalancingTransport implements Transport {
  private slots: Slot[] = [];
  private next = 0;
  private resolvedAt = -Infinity;
  private resolving: Promise<void> | undefined;
  private closed = false;

  constructor(
    private readonly target: ParsedTarget,
    private readonly policy: LoadBalancingPolicy,
    private readonly scheme: "http" | "https",
    private readonly factory: EndpointFactory,
    private readonly defaultTimeoutMs: number | undefined,
  ) {
    if (target.kind === "static") this.update(target.addresses);
  }

  /** The addresses calls currently go to (for tests and diagnostics). */
  get addresses(): string[] {
    return this.slots.filter((s) => !s.retired).map((s) => s.address);
  }

  close(): void {
    this.closed = true;
    for (const slot of this.slots) slot.endpoint.close();
    this.slots = [];
  }

  async unary<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: HeadersInit | undefined,
    input: MessageInitShape<I>,
    contextValues?: ContextValues,
  ): Promise<UnaryResponse<I, O>> {
    return this.attempts(timeoutMs, (slot, remaining) =>
      slot.endpoint.transport.unary(method, signal, remaining, header, input, contextValues),
    );
  }

  async stream<I extends DescMessage, O extends DescMessage>(
    method: DescMethodStreaming<I, O>,
    signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: HeadersInit | undefined,
    input: AsyncIterable<MessageInitShape<I>>,
    contextValues?: ContextValues,
  ): Promise<StreamResponse<I, O>> {
    if (method.methodKind !== "server_streaming") {
      // The request stream can be read once only: no second attempt.
      const slot = await this.pick();
      return this.track(slot, slot.endpoint.transport.stream(method, signal, timeoutMs, header, input, contextValues));
    }
    const requests: MessageInitShape<I>[] = [];
    for await (const request of input) requests.push(request);
    // stream() resolves once the gateway sent its response headers: a failure before them
    // (no connection, or a trailers-only status such as SHUTTING_DOWN) rejects it, so a
    // retry never repeats a call whose messages were received.
    return this.attempts(timeoutMs, (slot, remaining) =>
      slot.endpoint.transport.stream(method, signal, remaining, header, iterate(requests), contextValues),
    );
  }

  /** One attempt, and a second on the next address when the first never ran on a gateway. */
  private async attempts<R>(timeoutMs: number | undefined, call: (slot: Slot, remainingMs: number | undefined) => Promise<R>): Promise<R> {
    const budget = timeoutMs ?? this.defaultTimeoutMs;
    const deadline = budget !== undefined && budget > 0 ? Date.now() + budget : undefined;
    const first = await this.pick();
    try {
      return await this.track(first, call(first, timeoutMs));
    } catch (err) {
      if (!mayGoElsewhere(err)) throw err;
      this.markDown(first);
      const second = await this.pick(first);
      if (second === first) throw err;
      const remaining = deadline === undefined ? timeoutMs : Math.max(1, deadline - Date.now());
      return await this.track(second, call(second, remaining));
    }
  }

  private async track<R>(slot: Slot, pending: Promise<R>): Promise<R> {
    slot.inFlight++;
    try {
      const result = await pending;
      slot.failures = 0;
      slot.downUntil = 0;
      return result;
    } finally {
      slot.inFlight--;
      if (slot.retired && slot.inFlight === 0) slot.endpoint.close();
    }
  }

  private markDown(slot: Slot): void {
    slot.failures++;
    const delay = Math.min(BACKOFF_INITIAL_MS * BACKOFF_MULTIPLIER ** (slot.failures - 1), BACKOFF_MAX_MS);
    slot.downUntil = Date.now() + delay;
  }

  /** The address for the next call: round_robin rotates, pick_first takes the first up; down ones are skipped. */
  private async pick(avoid?: Slot): Promise<Slot> {
    if (this.closed) throw new ConnectError("the client is closed", Code.Canceled);
    const now = Date.now();
    await this.refresh(this.slots.length > 0 && this.slots.every((s) => s.downUntil > now));
    const live = this.slots.filter((s) => !s.retired);
    if (live.length === 0) {
      throw new ConnectError(`no address for ${this.describeTarget()}`, Code.Unavailable);
    }
    const others = live.filter((s) => s !== avoid);
    const up = others.filter((s) => s.downUntil <= now);
    if (up.length > 0) return this.policy === "round_robin" ? up[this.next++ % up.length]! : up[0]!;
    // Every other address is down: try the one that comes back first rather than fail here.
    const soonest = others.reduce<Slot | undefined>((a, s) => (a && a.downUntil <= s.downUntil ? a : s), undefined);
    return soonest ?? avoid ?? live[0]!;
  }

  /** Resolves a DNS target at first use, every DNS_REFRESH_MS, and sooner when every address is down. */
  private async refresh(allDown: boolean): Promise<void> {
    if (this.target.kind !== "dns") return;
    const due = this.slots.length === 0 || Date.now() - this.resolvedAt >= DNS_REFRESH_MS || allDown;
    if (!due) return;
    if (!this.resolving) {
      const { host, port } = this.target;
      this.resolving = lookup(host, { all: true })
        .then((records) => {
          this.resolvedAt = Date.now();
          this.update(records.map((r) => joinHostPort(r.address, port)));
        })
        .catch((err: unknown) => {
          this.resolvedAt = Date.now();
          // Keep the addresses known so far; with none, the call fails Unavailable.
          if (this.slots.length === 0) {
            throw new ConnectError(`cannot resolve ${host}: ${String(err)}`, Code.Unavailable, undefined, undefined, err);
          }
        })
        .finally(() => {
          this.resolving = undefined;
        });
    }
    await this.resolving;
  }

  /** New addresses get a connection; vanished ones are closed once their calls ended. */
  private update(addresses: string[]): void {
    if (this.closed) return;
    const wanted = new Set(addresses);
    for (const slot of this.slots) {
      if (!wanted.has(slot.address) && !slot.retired) {
        slot.retired = true;
        if (slot.inFlight === 0) slot.endpoint.close();
      }
    }
    this.slots = this.slots.filter((s) => !s.retired || s.inFlight > 0);
    const known = new Set(this.slots.filter((s) => !s.retired).map((s) => s.address));
    for (const address of wanted) {
      if (known.has(address)) continue;
      const endpoint = this.factory(new URL(`${this.scheme}://${address}`));
      this.slots.push({ address, endpoint, failures: 0, downUntil: 0, inFlight: 0, retired: false });
    }
  }

  private describeTarget(): string {
    return this.target.kind === "dns" ? `${this.target.host}:${this.target.port}` : this.target.addresses.join(",");
  }
}

async function* iterate<T>(items: readonly T[]): AsyncIterable<T> {
  yield* items;
}
