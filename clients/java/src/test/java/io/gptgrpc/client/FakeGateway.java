package io.gptgrpc.client;

import com.google.protobuf.Any;
import com.google.rpc.BadRequest;
import com.google.rpc.Code;
import com.google.rpc.ErrorInfo;
import com.google.rpc.QuotaFailure;
import com.google.rpc.RetryInfo;
import gptgrpc.v1.GPTServiceGrpc;
import gptgrpc.v1.Gateway.ChatCompletionDelta;
import gptgrpc.v1.Gateway.ChatCompletionRequest;
import gptgrpc.v1.Gateway.ChatCompletionResponse;
import gptgrpc.v1.Gateway.ChatCompletionSummary;
import gptgrpc.v1.Gateway.ConfigureRequest;
import gptgrpc.v1.Gateway.ConfigureResponse;
import gptgrpc.v1.Gateway.Configuration;
import gptgrpc.v1.Gateway.Conversation;
import gptgrpc.v1.Gateway.ConverseRequest;
import gptgrpc.v1.Gateway.ConverseResponse;
import gptgrpc.v1.Gateway.ConverseSummary;
import gptgrpc.v1.Gateway.CountTokensRequest;
import gptgrpc.v1.Gateway.CountTokensResponse;
import gptgrpc.v1.Gateway.CreateClientRequest;
import gptgrpc.v1.Gateway.CreateClientResponse;
import gptgrpc.v1.Gateway.CreateConversationRequest;
import gptgrpc.v1.Gateway.CreateConversationResponse;
import gptgrpc.v1.Gateway.StreamConverseRequest;
import gptgrpc.v1.Gateway.StreamConverseResponse;
import gptgrpc.v1.Gateway.GetUsageRequest;
import gptgrpc.v1.Gateway.GetUsageResponse;
import gptgrpc.v1.Gateway.StreamChatCompletionRequest;
import gptgrpc.v1.Gateway.StreamChatCompletionResponse;
import gptgrpc.v1.Gateway.Usage;
import io.grpc.Context;
import io.grpc.Deadline;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * A GPTService on a loopback port for the wrapper's unit tests: it records the authorization headers and the
 * deadline of each call, answers chats with "Echo: " + the user message, streams it in two deltas, and fails with
 * rich error details on demand (user message "fail", GetUsage).
 */
final class FakeGateway extends GPTServiceGrpc.GPTServiceImplBase implements AutoCloseable {
  static final Metadata.Key<String> AUTHORIZATION = GatewayTokens.AUTHORIZATION;
  private static final Context.Key<Metadata> HEADERS = Context.key("headers");

  /** Method name (e.g. "Configure") -> the authorization values of its last call. */
  final Map<String, List<String>> auth = new ConcurrentHashMap<>();
  /** Method name -> the time left (ms) at the start of its last call; -1 when it had no deadline. */
  final Map<String, Long> deadlineMs = new ConcurrentHashMap<>();
  /** Counted down when a call of a "hang" stream is cancelled by the client. */
  final CountDownLatch cancelled = new CountDownLatch(1);
  private final Server server;

  FakeGateway() throws IOException {
    ServerInterceptor capture = new ServerInterceptor() {
      @Override
      public <Q, R> ServerCall.Listener<Q> interceptCall(
          ServerCall<Q, R> call, Metadata headers, ServerCallHandler<Q, R> next) {
        return io.grpc.Contexts.interceptCall(Context.current().withValue(HEADERS, headers), call, headers, next);
      }
    };
    server = NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", 0))
        .addService(ServerInterceptors.intercept(this, capture))
        .build()
        .start();
  }

  String target() {
    return "127.0.0.1:" + server.getPort();
  }

  private void record(String method) {
    Metadata headers = HEADERS.get();
    Iterable<String> values = headers.getAll(AUTHORIZATION);
    List<String> list = new ArrayList<>();
    if (values != null) {
      values.forEach(list::add);
    }
    auth.put(method, list);
    Deadline d = Context.current().getDeadline();
    deadlineMs.put(method, d == null ? -1L : d.timeRemaining(TimeUnit.MILLISECONDS));
  }

  @Override
  public void chatCompletion(ChatCompletionRequest req, StreamObserver<ChatCompletionResponse> out) {
    record("ChatCompletion");
    if (req.getUserMessage().equals("fail")) {
      com.google.rpc.Status st = com.google.rpc.Status.newBuilder()
          .setCode(Code.RESOURCE_EXHAUSTED_VALUE)
          .setMessage("upstream rate limited")
          .addDetails(Any.pack(ErrorInfo.newBuilder().setReason("UPSTREAM_RATE_LIMITED").setDomain("gpt-grpc")
              .putMetadata("http_status", "429").putMetadata("request_id", "req_upstream").build()))
          .addDetails(Any.pack(RetryInfo.newBuilder()
              .setRetryDelay(com.google.protobuf.Duration.newBuilder().setSeconds(1).setNanos(500_000_000)).build()))
          .addDetails(Any.pack(BadRequest.newBuilder().addFieldViolations(
              BadRequest.FieldViolation.newBuilder().setField("temperature").setDescription("0..2")).build()))
          .build();
      out.onError(StatusProto.toStatusRuntimeException(st, gatewayTrailers()));
      return;
    }
    out.onNext(ChatCompletionResponse.newBuilder().setContent("Echo: " + req.getUserMessage()).build());
    out.onCompleted();
  }

  @Override
  public void streamChatCompletion(
      StreamChatCompletionRequest req, StreamObserver<StreamChatCompletionResponse> out) {
    record("StreamChatCompletion");
    if (req.getUserMessage().equals("hang")) {
      out.onNext(delta("partial"));
      Context.current().addListener(ctx -> cancelled.countDown(), Runnable::run);
      return; // never completes: the client must cancel
    }
    out.onNext(delta("Echo: "));
    out.onNext(delta(req.getUserMessage()));
    if (!req.getUserMessage().equals("no summary")) {
      out.onNext(StreamChatCompletionResponse.newBuilder().setSummary(
          ChatCompletionSummary.newBuilder().setUsage(Usage.newBuilder().setTotalTokens(5))).build());
    }
    out.onCompleted();
  }

  private static StreamChatCompletionResponse delta(String content) {
    return StreamChatCompletionResponse.newBuilder()
        .setDelta(ChatCompletionDelta.newBuilder().setContent(content)).build();
  }

  @Override
  public void countTokens(CountTokensRequest req, StreamObserver<CountTokensResponse> out) {
    record("CountTokens");
    out.onNext(CountTokensResponse.newBuilder().setTokenCount(2).setEncoding("cl100k_base").build());
    out.onCompleted();
  }

  @Override
  public void configure(ConfigureRequest req, StreamObserver<ConfigureResponse> out) {
    record("Configure");
    out.onNext(ConfigureResponse.newBuilder().setConfiguration(Configuration.newBuilder().setGeneration(1)).build());
    out.onCompleted();
  }

  @Override
  public void createClient(CreateClientRequest req, StreamObserver<CreateClientResponse> out) {
    record("CreateClient");
    out.onNext(CreateClientResponse.newBuilder().setToken("tok").build());
    out.onCompleted();
  }

  @Override
  public void getUsage(GetUsageRequest req, StreamObserver<GetUsageResponse> out) {
    record("GetUsage");
    com.google.rpc.Status st = com.google.rpc.Status.newBuilder()
        .setCode(Code.RESOURCE_EXHAUSTED_VALUE)
        .setMessage("budget spent")
        .addDetails(Any.pack(ErrorInfo.newBuilder().setReason("CLIENT_BUDGET_EXCEEDED").setDomain("gpt-grpc").build()))
        .addDetails(Any.pack(QuotaFailure.newBuilder().addViolations(
            QuotaFailure.Violation.newBuilder().setSubject("client:acme").setDescription("spent")).build()))
        .build();
    out.onError(StatusProto.toStatusRuntimeException(st, gatewayTrailers()));
  }

  @Override
  public void createConversation(CreateConversationRequest req, StreamObserver<CreateConversationResponse> out) {
    record("CreateConversation");
    out.onNext(CreateConversationResponse.newBuilder()
        .setConversation(Conversation.newBuilder().setId("conv_" + "a".repeat(32)).setSystemMessage(req.getSystemMessage()))
        .build());
    out.onCompleted();
  }

  @Override
  public void converse(ConverseRequest req, StreamObserver<ConverseResponse> out) {
    record("Converse");
    out.onNext(ConverseResponse.newBuilder()
        .setContent("Echo: " + req.getUserMessage() + " in " + req.getConversationId()).setMessageCount(2).build());
    out.onCompleted();
  }

  @Override
  public void streamConverse(StreamConverseRequest req, StreamObserver<StreamConverseResponse> out) {
    record("StreamConverse");
    for (String part : List.of("Echo: ", req.getUserMessage())) {
      out.onNext(StreamConverseResponse.newBuilder()
          .setDelta(ChatCompletionDelta.newBuilder().setContent(part)).build());
    }
    out.onNext(StreamConverseResponse.newBuilder()
        .setSummary(ConverseSummary.newBuilder().setMessageCount(4).setTrimmedMessages(1).setContextTokens(12)).build());
    out.onCompleted();
  }

  private static Metadata gatewayTrailers() {
    Metadata m = new Metadata();
    m.put(GatewayException.REQUEST_ID_TRAILER, "gw_123");
    return m;
  }

  @Override
  public void close() {
    server.shutdownNow();
    try {
      server.awaitTermination(5, TimeUnit.SECONDS);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }
}
