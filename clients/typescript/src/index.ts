/**
 * Typed Node.js client of the gpt-grpc gateway (gptgrpc.v1.GPTService over
 * gRPC, HTTP/2), built on Connect-ES and protobuf-es.
 *
 * ```ts
 * import { createClient, errorDetails } from "@gpt-grpc/client";
 *
 * const client = createClient("gateway.internal:50051", {
 *   tls: { ca: readFileSync("ca.pem"), cert: readFileSync("client.pem"), key: readFileSync("client-key.pem") },
 *   clientToken: process.env.GPT_GRPC_TOKEN, // data-plane calls
 *   adminToken: process.env.GPT_GRPC_ADMIN_TOKEN, // admin calls only
 * });
 * try {
 *   const res = await client.chatCompletion({ userMessage: "hi" });
 * } catch (err) {
 *   const { code, reason, retryInfo } = errorDetails(err);
 * }
 * client.close();
 * ```
 */
import type { DescMethod, MessageInitShape } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createClient as createConnectClient,
  type CallOptions,
  type Client,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AsyncLocalStorage } from "node:async_hooks";
import type { ClientHttp2Session, ClientHttp2Stream, SecureClientSessionOptions } from "node:http2";

import { BalancingTransport, neverSent, parseTarget, type Endpoint, type LoadBalancingPolicy } from "./balancing.js";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
  type BadRequest,
  type ErrorInfo,
  type QuotaFailure,
  type RetryInfo,
} from "./gen/google/rpc/error_details_pb.js";
import {
  ErrorReason,
  ErrorReasonSchema,
  GPTService,
  type ChatCompletionDelta,
  type ChatCompletionSummary,
  type ConverseSummary,
  type CreateConversationRequestSchema,
  type StreamChatCompletionResponse,
  type StreamConverseResponse,
} from "./gen/gptgrpc/v1/gateway_pb.js";

export * from "./gen/gptgrpc/v1/gateway_pb.js";
export {
  audioPart,
  filePart,
  imagePart,
  textPart,
  userMessage,
  type DetailLike,
  type MediaSource,
} from "./parts.js";
export {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
  type BadRequest,
  type ErrorInfo,
  type QuotaFailure,
  type RetryInfo,
} from "./gen/google/rpc/error_details_pb.js";
export { Code, ConnectError, type CallOptions, type Interceptor, type Transport } from "@connectrpc/connect";
export { DNS_REFRESH_MS, parseTarget, type LoadBalancingPolicy, type ParsedTarget } from "./balancing.js";

/** The google.rpc.ErrorInfo domain of the gateway's errors. */
export const ERROR_DOMAIN = "gpt-grpc";

/** PEM material for TLS and mutual TLS. */
export interface TlsOptions {
  /** CA certificates that sign the gateway's certificate (default: Node's root store). */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Client certificate chain, for mutual TLS (with key). */
  cert?: string | Buffer;
  /** Private key of cert. */
  key?: string | Buffer;
  /** Name checked against the gateway's certificate (default: the host of the target). */
  serverName?: string;
}

/** Options of createClient. */
export interface ClientOptions {
  /** Plaintext HTTP/2 (h2c), e.g. a gateway on loopback. Default: TLS. */
  insecure?: boolean;
  /** TLS settings (not with insecure). */
  tls?: TlsOptions;
  /** Admin token, sent as "authorization: Bearer <token>" with the admin RPCs only (see ADMIN_RPCS). */
  adminToken?: string;
  /** Client token (from CreateClient), sent with every other call. */
  clientToken?: string;
  /** Deadline applied to every call that sets no timeoutMs. */
  defaultTimeoutMs?: number;
  /**
   * Further Connect interceptors, run after the admin-token one. A connection that
   * fails before the gateway answers reaches them (and the caller) as Unavailable.
   */
  interceptors?: Interceptor[];
  /**
   * Spread calls over several replicas: "round_robin" rotates them over every address of
   * the target ("dns:///gateway.internal:50051" or "host:port": every A/AAAA record,
   * re-resolved every 30 s; "ipv4:10.0.0.1:50051,10.0.0.2:50051"), with one HTTP/2
   * connection each; "pick_first" sends them all to the first address that is up (the
   * default for ipv4:/ipv6:/dns: targets). See balancing.ts for the details.
   */
  loadBalancing?: LoadBalancingPolicy;
}

/** A GPTService client; close() drops its HTTP/2 connection. */
export type GPTClient = Client<typeof GPTService> & {
  /** The Connect transport, to build clients of other services on the same connection. */
  readonly transport: Transport;
  /** Closes the HTTP/2 connection; calls in flight fail (Canceled). */
  close(): void;
};

/** The RPCs that take the admin token. */
export const ADMIN_RPCS: readonly string[] = ["Configure", "CreateClient", "ListClients", "UpdateClient", "RevokeClient"];
/** The other known RPCs, which take a client token (a test checks that every RPC is in one list). */
export const DATA_PLANE_RPCS: readonly string[] = [
  "ChatCompletion",
  "StreamChatCompletion",
  "CountTokens",
  "GetConfiguration",
  "ListModels",
  "GetUsage",
  // Conversations: ListConversations and DeleteConversation reach every client's with withAdminToken().
  "CreateConversation",
  "Converse",
  "StreamConverse",
  "GetConversation",
  "ListConversations",
  "DeleteConversation",
  "ListUpstreams",
];

/** Whether method is an admin RPC of GPTService (takes the admin token, not a client token). */
export function isAdminMethod(method: DescMethod): boolean {
  return method.parent.typeName === GPTService.typeName && ADMIN_RPCS.includes(method.name);
}

function tokenInterceptor(adminToken: string | undefined, clientToken: string | undefined): Interceptor {
  return (next) => async (req) => {
    const token = isAdminMethod(req.method) ? adminToken : clientToken;
    if (token && !req.header.has("authorization")) {
      req.header.set("authorization", `Bearer ${token}`);
    }
    return next(req);
  };
}

/** Call options that send a token (admin or client) with one call: `client.getUsage(req, withToken(t))`. */
export function withToken(token: string, options: CallOptions = {}): CallOptions {
  const headers = new Headers(options.headers);
  headers.set("authorization", `Bearer ${token}`);
  return { ...options, headers };
}

/** Call options that send the admin token with one call: `client.configure(req, withAdminToken(t))`. */
export function withAdminToken(token: string, options: CallOptions = {}): CallOptions {
  return withToken(token, options);
}

/**
 * What the HTTP/2 layer saw of one attempt of a call: filled in by
 * GatewaySessionManager.request(), read by connectionFailureInterceptor().
 */
interface CallConnection {
  /** The connection could not be established (refused, unresolvable, TLS handshake failed, ...). */
  connectFailed: boolean;
  /** The connection the call's stream was opened on. */
  session?: ClientHttp2Session;
  /** Response headers arrived: the gateway answered, whatever the status. */
  responded: boolean;
  /** close() was called while the call was waiting for its response headers. */
  closedByCaller: boolean;
}

/** The CallConnection of the call being made (set by the interceptor, around the transport). */
const currentCall = new AsyncLocalStorage<CallConnection>();

/**
 * The client's HTTP/2 connection: Connect's session manager, which also records,
 * for the call being made, whether its connection failed before the gateway answered.
 */
class GatewaySessionManager extends Http2SessionManager {
  /** Calls waiting for their response headers, marked by abort() (client.close()). */
  readonly waiting = new Set<CallConnection>();
  /** Sessions given a fallback "error" listener. */
  private readonly guarded = new WeakSet<ClientHttp2Session>();

  override async request(...args: Parameters<Http2SessionManager["request"]>): Promise<ClientHttp2Stream> {
    const call = currentCall.getStore();
    let stream: ClientHttp2Stream;
    try {
      stream = await super.request(...args);
    } catch (err) {
      // Connection failures come as ConnectErrors; anything else (e.g. an invalid
      // header value, thrown by Node) is the caller's.
      if (call && err instanceof ConnectError) call.connectFailed = true;
      throw err;
    }
    const session = stream.session as ClientHttp2Session | undefined;
    if (session && !this.guarded.has(session)) {
      // Connect removes its listeners when the client is closed, but Node may emit
      // a session error (e.g. a peer that does not speak HTTP/2) a tick after the
      // call failed on it: without a listener, that error would crash the process.
      // Calls already got it through their streams.
      this.guarded.add(session);
      session.on("error", () => {});
    }
    if (call) {
      if (session) call.session = session;
      stream.once("response", () => {
        call.responded = true;
      });
    }
    return stream;
  }

  override abort(reason?: Error): void {
    for (const call of this.waiting) call.closedByCaller = true;
    super.abort(reason);
  }
}

/**
 * Reports a connection that failed before the gateway answered as Unavailable,
 * as gRPC (and the Go and Python clients) do. Connect-node raises Canceled
 * ("http/2 stream closed with error code CANCEL") when the peer closes the
 * connection (plaintext to a TLS port, a client certificate refused under mTLS),
 * Internal for a TLS handshake error (server certificate that does not verify)
 * or an HTTP/2 protocol error, Aborted for a connection reset while connecting.
 * Left as they are: calls the caller cancelled (AbortSignal, deadline,
 * client.close()), and any call that received response headers (a status the
 * gateway sent, with its details). The innermost interceptor, so that the
 * caller's interceptors see the mapped error.
 */
function connectionFailureInterceptor(sessionManager: GatewaySessionManager): Interceptor {
  return (next) => async (req) => {
    const call: CallConnection = { connectFailed: false, responded: false, closedByCaller: false };
    sessionManager.waiting.add(call);
    try {
      return await currentCall.run(call, () => next(req));
    } catch (err) {
      if (req.signal.aborted || call.closedByCaller || call.responded) throw err;
      // The stream failed with its connection (a gateway that resets one stream keeps the connection).
      const lost = call.session !== undefined && (call.session.destroyed || call.session.closed);
      if (!call.connectFailed && !lost) throw err;
      const ce = ConnectError.from(err);
      const mapped =
        ce.code === Code.Unavailable
          ? err
          : new ConnectError(
              lost ? `connection closed before the gateway answered: ${ce.rawMessage}` : ce.rawMessage,
              Code.Unavailable,
              undefined,
              undefined,
              ce.cause ?? ce,
            );
      // No connection, so no request went out: a balancing transport may send it elsewhere.
      if (call.connectFailed && typeof mapped === "object" && mapped !== null) neverSent.add(mapped);
      throw mapped;
    } finally {
      sessionManager.waiting.delete(call);
    }
  };
}

function baseUrl(target: string, insecure: boolean): URL {
  const m = /^(https?):\/\//.exec(target);
  if (m) {
    if ((m[1] === "http") !== insecure) {
      throw new Error(`gpt-grpc: target ${target} conflicts with insecure=${insecure}`);
    }
    return new URL(target);
  }
  return new URL(`${insecure ? "http" : "https"}://${target}`);
}

/**
 * Creates a client for the gateway at target ("host:port", or an http:// or
 * https:// URL). Connects lazily, on the first call.
 */
export function createClient(target: string, options: ClientOptions = {}): GPTClient {
  const insecure = options.insecure ?? false;
  if (options.adminToken === "") throw new Error("gpt-grpc: adminToken is empty");
  if (options.clientToken === "") throw new Error("gpt-grpc: clientToken is empty");
  if (insecure && options.tls) {
    throw new Error("gpt-grpc: insecure cannot be combined with tls options");
  }
  const policy = options.loadBalancing;
  if (policy !== undefined && policy !== "round_robin" && policy !== "pick_first") {
    throw new Error(`gpt-grpc: unknown loadBalancing ${JSON.stringify(policy)}; use "round_robin" or "pick_first"`);
  }
  const nodeOptions: SecureClientSessionOptions = {};
  if (options.tls) {
    const { ca, cert, key, serverName } = options.tls;
    if (ca !== undefined) nodeOptions.ca = ca;
    if (cert !== undefined) nodeOptions.cert = cert;
    if (key !== undefined) nodeOptions.key = key;
    if (serverName !== undefined) nodeOptions.servername = serverName;
  }
  const interceptors: Interceptor[] = [];
  if (options.adminToken || options.clientToken) {
    interceptors.push(tokenInterceptor(options.adminToken, options.clientToken));
  }
  interceptors.push(...(options.interceptors ?? []));
  const endpoint = (url: URL, tlsOptions: SecureClientSessionOptions): Endpoint => {
    const sessionManager = new GatewaySessionManager(url, {}, tlsOptions);
    const transport = createGrpcTransport({
      baseUrl: url.toString(),
      sessionManager,
      interceptors: [...interceptors, connectionFailureInterceptor(sessionManager)],
      ...(options.defaultTimeoutMs !== undefined ? { defaultTimeoutMs: options.defaultTimeoutMs } : {}),
    });
    return { transport, close: () => sessionManager.abort() };
  };
  if (policy === undefined && !GRPC_SCHEME.test(target)) {
    const single = endpoint(baseUrl(target, insecure), nodeOptions);
    return Object.assign(createConnectClient(GPTService, single.transport), single);
  }
  const parsed = parseTarget(target.replace(/^https?:\/\//, ""));
  // One connection per address, each checking the certificate against the DNS name (or
  // the given serverName), not against the address it connects to.
  const tlsOptions =
    parsed.kind === "dns" && !insecure && nodeOptions.servername === undefined
      ? { ...nodeOptions, servername: parsed.host }
      : nodeOptions;
  const balancing = new BalancingTransport(
    parsed,
    policy ?? "pick_first",
    insecure ? "http" : "https",
    (url) => endpoint(url, tlsOptions),
    options.defaultTimeoutMs,
  );
  return Object.assign(createConnectClient(GPTService, balancing), {
    transport: balancing as Transport,
    close: () => balancing.close(),
  });
}

/** Targets that name gRPC's resolvers: ipv4:/ipv6: address lists and dns: names. */
const GRPC_SCHEME = /^(ipv4|ipv6|dns):/;

/** The decoded google.rpc details of a gateway error. */
export interface GatewayErrorDetails {
  /** The gRPC status code. */
  code: Code;
  /** The status message, without the code prefix. */
  message: string;
  /** The ErrorInfo reason, an ErrorReason name such as "UPSTREAM_RATE_LIMITED"; "" when absent. */
  reason: string;
  /** The first google.rpc.ErrorInfo, if any. */
  errorInfo?: ErrorInfo;
  /** The first google.rpc.RetryInfo, if any. */
  retryInfo?: RetryInfo;
  /** The first google.rpc.BadRequest, if any. */
  badRequest?: BadRequest;
  /** The first google.rpc.QuotaFailure (with CLIENT_BUDGET_EXCEEDED), if any. */
  quotaFailure?: QuotaFailure;
}

/** Decodes the details of any error thrown by a call (a non-Connect error gives code Unknown and no details). */
export function errorDetails(err: unknown): GatewayErrorDetails {
  const ce = ConnectError.from(err);
  const errorInfo = ce.findDetails(ErrorInfoSchema)[0];
  const retryInfo = ce.findDetails(RetryInfoSchema)[0];
  const badRequest = ce.findDetails(BadRequestSchema)[0];
  const quotaFailure = ce.findDetails(QuotaFailureSchema)[0];
  return {
    code: ce.code,
    message: ce.rawMessage,
    reason: errorInfo?.reason ?? "",
    ...(errorInfo ? { errorInfo } : {}),
    ...(retryInfo ? { retryInfo } : {}),
    ...(badRequest ? { badRequest } : {}),
    ...(quotaFailure ? { quotaFailure } : {}),
  };
}

/** The typed ErrorReason of a gateway error; ERROR_REASON_UNSPECIFIED when absent or unknown to this version. */
export function errorReason(err: unknown): ErrorReason {
  const { errorInfo } = errorDetails(err);
  if (!errorInfo || errorInfo.domain !== ERROR_DOMAIN) return ErrorReason.ERROR_REASON_UNSPECIFIED;
  const value = ErrorReasonSchema.values.find((v) => v.name === errorInfo.reason);
  return value ? (value.number as ErrorReason) : ErrorReason.ERROR_REASON_UNSPECIFIED;
}

/** A whole streamed answer. */
export interface StreamResult {
  /** Every delta's content, concatenated. */
  content: string;
  /** Every delta's refusal, concatenated. */
  refusal: string;
  /** The stream's final message. */
  summary: ChatCompletionSummary;
}

/**
 * Reads a StreamChatCompletion stream to its end, calling onDelta for each
 * delta as it arrives. Throws the stream's ConnectError, or an Error when
 * the stream ends without a summary.
 */
export async function collectStream(
  stream: AsyncIterable<StreamChatCompletionResponse>,
  onDelta?: (delta: ChatCompletionDelta) => void,
): Promise<StreamResult> {
  return collect<ChatCompletionSummary>(stream, onDelta);
}

/** One message of a stream of deltas then one summary (StreamChatCompletion, StreamConverse). */
interface DeltaEvent<S> {
  event:
    | { case: "delta"; value: ChatCompletionDelta }
    | { case: "summary"; value: S }
    | { case: undefined; value?: undefined };
}

/** Reads a stream of deltas then one summary to its end. */
async function collect<S>(
  stream: AsyncIterable<DeltaEvent<S>>,
  onDelta?: (delta: ChatCompletionDelta) => void,
): Promise<{ content: string; refusal: string; summary: S }> {
  let content = "";
  let refusal = "";
  let summary: S | undefined;
  for await (const res of stream) {
    if (res.event.case === "delta") {
      content += res.event.value.content;
      refusal += res.event.value.refusal;
      onDelta?.(res.event.value);
    } else if (res.event.case === "summary") {
      summary = res.event.value;
    }
  }
  if (summary === undefined) throw new Error("gpt-grpc: stream ended without a summary");
  return { content, refusal, summary };
}

/** A whole streamed turn of a conversation. */
export interface ConverseResult {
  /** Every delta's content, concatenated. */
  content: string;
  /** Every delta's refusal, concatenated. */
  refusal: string;
  /** The stream's final message: usage, cost, context tokens, trimmed messages, message count. */
  summary: ConverseSummary;
}

/**
 * Reads a StreamConverse stream to its end, calling onDelta for each delta as
 * it arrives. Throws the stream's ConnectError (a turn whose stream fails or is
 * cancelled is not kept by the gateway), or an Error when it ends without a summary.
 */
export async function collectConverseStream(
  stream: AsyncIterable<StreamConverseResponse>,
  onDelta?: (delta: ChatCompletionDelta) => void,
): Promise<ConverseResult> {
  return collect<ConverseSummary>(stream, onDelta);
}

/**
 * The original module's context_assistant: answers in one conversation the
 * gateway keeps, so each prompt is answered with the earlier ones in context
 * (the oldest left out, or summarized, once they no longer fit the model's
 * context window). The conversation is created on the first ask() from
 * `create`; if it later expires or is deleted, a new one starts. Turns run
 * one at a time.
 */
export class ContextAssistant {
  private id = "";
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly client: GPTClient,
    private readonly create: MessageInitShape<typeof CreateConversationRequestSchema> = {},
  ) {}

  /** The conversation's id ("" before the first ask()). */
  get conversationId(): string {
    return this.id;
  }

  /** Answers prompt in the assistant's conversation. */
  ask(prompt: string, options?: CallOptions): Promise<string> {
    const turn = this.queue.then(() => this.turn(prompt, options));
    this.queue = turn.catch(() => undefined);
    return turn;
  }

  /** Deletes the conversation; the next ask() starts a new one. */
  reset(options?: CallOptions): Promise<void> {
    const done = this.queue.then(async () => {
      const id = this.id;
      this.id = "";
      if (!id) return;
      try {
        await this.client.deleteConversation({ conversationId: id }, options);
      } catch (err) {
        if (errorReason(err) !== ErrorReason.CONVERSATION_NOT_FOUND) throw err;
      }
    });
    this.queue = done.catch(() => undefined);
    return done;
  }

  private async turn(prompt: string, options?: CallOptions): Promise<string> {
    if (this.id) {
      try {
        return (await this.client.converse({ conversationId: this.id, userMessage: prompt }, options)).content;
      } catch (err) {
        if (errorReason(err) !== ErrorReason.CONVERSATION_NOT_FOUND) throw err;
      }
    }
    const made = await this.client.createConversation(this.create, options);
    this.id = made.conversation?.id ?? "";
    return (await this.client.converse({ conversationId: this.id, userMessage: prompt }, options)).content;
  }
}
