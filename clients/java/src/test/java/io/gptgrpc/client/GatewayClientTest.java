package io.gptgrpc.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import gptgrpc.v1.Gateway.ChatCompletionDelta;
import gptgrpc.v1.Gateway.ChatCompletionRequest;
import gptgrpc.v1.Gateway.ConfigureRequest;
import gptgrpc.v1.Gateway.CountTokensRequest;
import gptgrpc.v1.Gateway.CreateClientRequest;
import gptgrpc.v1.Gateway.CreateConversationRequest;
import gptgrpc.v1.Gateway.ErrorReason;
import gptgrpc.v1.Gateway.GetUsageRequest;
import gptgrpc.v1.Gateway.StreamChatCompletionRequest;
import gptgrpc.v1.Gateway.StreamConverseRequest;
import io.grpc.Status;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.NoSuchElementException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** The wrapper against {@link FakeGateway} on a loopback port (plaintext). */
class GatewayClientTest {
  private static final long WAIT_S = 10;
  private FakeGateway gateway;
  private final List<GatewayClient> clients = new ArrayList<>();

  @BeforeEach
  void start() throws Exception {
    gateway = new FakeGateway();
  }

  @AfterEach
  void stop() throws Exception {
    clients.forEach(GatewayClient::close);
    gateway.close();
  }

  private GatewayClient client(GatewayChannelBuilder builder) {
    GatewayClient c = builder.defaultDeadline(Duration.ofSeconds(WAIT_S)).build();
    clients.add(c);
    return c;
  }

  private GatewayChannelBuilder plaintext() {
    return GatewayClient.builder(gateway.target()).plaintext();
  }

  @Test
  void adminTokenOnlyOnAdminRpcs() {
    GatewayClient c = client(plaintext().adminToken("s3cret"));
    c.configure(ConfigureRequest.getDefaultInstance());
    assertEquals(2, c.countTokens("gpt-4", "hello world"));
    assertEquals(List.of("Bearer s3cret"), gateway.auth.get("Configure"));
    assertEquals(List.of(), gateway.auth.get("CountTokens"));
    // A per-call token replaces the client's tokens, and is sent once.
    c.withToken("other").configure(ConfigureRequest.getDefaultInstance());
    assertEquals(List.of("Bearer other"), gateway.auth.get("Configure"));
  }

  @Test
  void clientAndAdminTokensEachOnTheirOwnRpcs() throws Exception {
    GatewayClient c = client(plaintext().adminToken("admin").clientToken("client"));
    c.createClient(CreateClientRequest.newBuilder().setName("acme").build());
    c.countTokens(CountTokensRequest.newBuilder().setText("x").build());
    try (ChatStream stream = c.streamChatCompletion(null, "x")) {
      stream.result();
    }
    c.async().countTokens(CountTokensRequest.getDefaultInstance()).get(WAIT_S, TimeUnit.SECONDS);
    assertEquals(List.of("Bearer admin"), gateway.auth.get("CreateClient"));
    assertEquals(List.of("Bearer client"), gateway.auth.get("CountTokens"));
    assertEquals(List.of("Bearer client"), gateway.auth.get("StreamChatCompletion"));
    GatewayException e = assertThrows(GatewayException.class,
        () -> c.withToken("admin").getUsage(GetUsageRequest.newBuilder().setClient("acme").build()));
    assertEquals(List.of("Bearer admin"), gateway.auth.get("GetUsage"));
    assertEquals(ErrorReason.CLIENT_BUDGET_EXCEEDED, e.errorReason());
    assertEquals("client:acme", e.quotaViolations().get(0).getSubject());
    assertEquals("gw_123", e.requestId().orElseThrow(), "no ErrorInfo request_id: the x-request-id trailer");
  }

  @Test
  void tokensAreValidatedAndNeverPrinted() {
    assertThrows(IllegalArgumentException.class, () -> plaintext().clientToken(""));
    assertThrows(IllegalArgumentException.class, () -> plaintext().adminToken("two words"));
    String shown = GatewayTokens.of("admin-secret", "client-secret").toString();
    assertFalse(shown.contains("secret"), shown);
  }

  @Test
  void errorDetailsAreDecoded() {
    GatewayClient c = client(plaintext());
    GatewayException e = assertThrows(GatewayException.class, () -> c.chatCompletion("", "fail"));
    assertEquals(Status.Code.RESOURCE_EXHAUSTED, e.code());
    assertEquals("UPSTREAM_RATE_LIMITED", e.reason());
    assertEquals(ErrorReason.UPSTREAM_RATE_LIMITED, e.errorReason());
    assertEquals("upstream rate limited", e.description());
    assertEquals("429", e.metadata().get("http_status"));
    assertEquals(Duration.ofMillis(1500), e.retryDelay().orElseThrow());
    assertTrue(e.isRetryable());
    assertEquals("temperature", e.fieldViolations().get(0).getField());
    assertEquals("req_upstream", e.requestId().orElseThrow(), "ErrorInfo's request_id comes first");
    assertEquals("gw_123", e.trailers().orElseThrow().get(GatewayException.REQUEST_ID_TRAILER));
    assertEquals("RESOURCE_EXHAUSTED UPSTREAM_RATE_LIMITED: upstream rate limited", e.getMessage());
    assertEquals(e, GatewayException.from(e));
  }

  @Test
  void aFailureWithoutDetailsHasNoReason() {
    GatewayException e = GatewayException.from(new IllegalStateException("not a status"));
    assertEquals(Status.Code.UNKNOWN, e.code());
    assertEquals("", e.reason());
    assertEquals(ErrorReason.ERROR_REASON_UNSPECIFIED, e.errorReason());
    assertTrue(e.retryDelay().isEmpty());
    assertTrue(e.requestId().isEmpty());
  }

  @Test
  void connectionRefusedIsUnavailable() throws Exception {
    String target = gateway.target();
    gateway.close();
    GatewayClient c = client(GatewayClient.builder(target).plaintext());
    GatewayException e = assertThrows(GatewayException.class, () -> c.countTokens("", "x"));
    assertEquals(Status.Code.UNAVAILABLE, e.code());
    assertEquals("", e.reason());
  }

  @Test
  void streamIteratesDeltasThenGivesTheSummary() {
    GatewayClient c = client(plaintext());
    try (ChatStream stream = c.streamChatCompletion("Be brief.", "hello")) {
      assertThrows(IllegalStateException.class, stream::summary, "no summary before the end");
      List<String> parts = new ArrayList<>();
      stream.forEachRemaining(d -> parts.add(d.getContent()));
      assertEquals(List.of("Echo: ", "hello"), parts);
      assertEquals(5, stream.summary().getUsage().getTotalTokens());
      assertEquals("Echo: hello", stream.content());
      assertFalse(stream.hasNext());
      assertThrows(NoSuchElementException.class, stream::next);
    }
  }

  @Test
  void streamWithoutSummaryFails() {
    GatewayClient c = client(plaintext());
    try (ChatStream stream = c.streamChatCompletion(null, "no summary")) {
      IllegalStateException e = assertThrows(IllegalStateException.class, stream::result);
      assertTrue(e.getMessage().contains("without a summary"), e.getMessage());
    }
  }

  @Test
  void closingAStreamCancelsTheCall() throws Exception {
    GatewayClient c = client(plaintext());
    ChatStream stream = c.streamChatCompletion(null, "hang");
    assertEquals("partial", stream.next().getContent());
    stream.close();
    assertTrue(gateway.cancelled.await(WAIT_S, TimeUnit.SECONDS), "the gateway saw no cancellation");
    assertFalse(stream.hasNext());
  }

  @Test
  void defaultDeadlineAndPerViewDeadline() {
    GatewayClient c = client(plaintext());
    c.countTokens("", "x");
    long left = gateway.deadlineMs.get("CountTokens");
    assertTrue(left > 0 && left <= WAIT_S * 1000, "default deadline: " + left + " ms left");
    GatewayClient longer = c.withDeadline(Duration.ofSeconds(WAIT_S * 100));
    longer.countTokens("", "x");
    assertTrue(gateway.deadlineMs.get("CountTokens") > WAIT_S * 1000, "the view's deadline replaces the default");
    GatewayClient none = GatewayClient.builder(gateway.target()).plaintext().build();
    clients.add(none);
    none.countTokens("", "x");
    assertEquals(-1L, gateway.deadlineMs.get("CountTokens"), "no default deadline: none sent");
  }

  @Test
  void aViewsDeadlineStartsWithEachCall() throws Exception {
    // grpc-java's stub.withDeadlineAfter fixes one instant when the stub is made: a view used later would send
    // an ever shorter deadline. The view's deadline must count from the start of each call.
    GatewayClient view = client(plaintext()).withDeadline(Duration.ofSeconds(5));
    Thread.sleep(2000); // counted from the view's creation, at most 3000 ms would be left
    view.countTokens("", "x");
    long left = gateway.deadlineMs.get("CountTokens");
    assertTrue(left > 3500, "the deadline counted from the view's creation: " + left + " ms left of 5000");
    view.async().countTokens(CountTokensRequest.getDefaultInstance()).get(WAIT_S, TimeUnit.SECONDS);
    assertTrue(gateway.deadlineMs.get("CountTokens") > 3500, "async view: " + gateway.deadlineMs.get("CountTokens"));
  }

  @Test
  void asyncCallsCompleteAndFail() throws Exception {
    AsyncGatewayClient a = client(plaintext().clientToken("client")).async();
    assertEquals("Echo: hi", a.chatCompletion(null, "hi").get(WAIT_S, TimeUnit.SECONDS));
    List<String> deltas = new ArrayList<>();
    StreamResult res = a.streamChatCompletion(
        StreamChatCompletionRequest.newBuilder().setUserMessage("async").build(),
        (ChatCompletionDelta d) -> deltas.add(d.getContent())).get(WAIT_S, TimeUnit.SECONDS);
    assertEquals("Echo: async", res.content());
    assertEquals(List.of("Echo: ", "async"), deltas);
    assertEquals(5, res.summary().getUsage().getTotalTokens());
    assertEquals(List.of("Bearer client"), gateway.auth.get("StreamChatCompletion"));
    CompletableFuture<?> failed = a.chatCompletion(ChatCompletionRequest.newBuilder().setUserMessage("fail").build());
    ExecutionException e = assertThrows(ExecutionException.class, () -> failed.get(WAIT_S, TimeUnit.SECONDS));
    GatewayException g = assertInstanceOf(GatewayException.class, e.getCause());
    assertEquals("UPSTREAM_RATE_LIMITED", g.reason());
  }

  @Test
  void cancellingAnAsyncStreamCancelsTheCall() throws Exception {
    AsyncGatewayClient a = client(plaintext()).async();
    CompletableFuture<String> first = new CompletableFuture<>();
    CompletableFuture<StreamResult> res = a.streamChatCompletion(
        StreamChatCompletionRequest.newBuilder().setUserMessage("hang").build(), d -> first.complete(d.getContent()));
    assertEquals("partial", first.get(WAIT_S, TimeUnit.SECONDS));
    assertTrue(res.cancel(true));
    assertTrue(gateway.cancelled.await(WAIT_S, TimeUnit.SECONDS), "the gateway saw no cancellation");
  }

  @Test
  void anExceptionInOnDeltaFailsTheFuture() {
    AsyncGatewayClient a = client(plaintext()).async();
    CompletableFuture<StreamResult> res = a.streamChatCompletion(
        StreamChatCompletionRequest.newBuilder().setUserMessage("x").build(), d -> {
          throw new IllegalArgumentException("caller's bug");
        });
    ExecutionException e = assertThrows(ExecutionException.class, () -> res.get(WAIT_S, TimeUnit.SECONDS));
    assertInstanceOf(IllegalArgumentException.class, e.getCause());
  }

  @Test
  void conversationsBlockingAndAsync() throws Exception {
    GatewayClient c = client(plaintext().clientToken("client").adminToken("admin"));
    String id = c.createConversation(CreateConversationRequest.newBuilder().setSystemMessage("Be brief.").build())
        .getConversation().getId();
    assertEquals("Echo: hi in " + id, c.converse(id, "hi"));
    assertEquals(List.of("Bearer client"), gateway.auth.get("Converse"), "a data-plane RPC: the client token");
    try (ConverseStream stream =
        c.streamConverse(StreamConverseRequest.newBuilder().setConversationId(id).setUserMessage("two").build())) {
      ConverseResult res = stream.result();
      assertEquals("Echo: two", res.content());
      assertEquals(4, res.summary().getMessageCount());
      assertEquals(1, res.summary().getTrimmedMessages());
      assertEquals(12, stream.summary().getContextTokens());
    }
    List<String> deltas = new ArrayList<>();
    ConverseResult res = c.async().streamConverse(
        StreamConverseRequest.newBuilder().setConversationId(id).setUserMessage("async").build(),
        d -> deltas.add(d.getContent())).get(WAIT_S, TimeUnit.SECONDS);
    assertEquals(List.of("Echo: ", "async"), deltas);
    assertEquals("Echo: async", res.content());
    assertEquals(4, res.summary().getMessageCount());
  }

  @Test
  void plaintextRefusesTlsOptions() {
    GatewayChannelBuilder b = GatewayClient.builder("127.0.0.1:1").plaintext().caFile(Path.of("ca.pem"));
    assertThrows(IllegalStateException.class, b::build);
    assertThrows(IllegalArgumentException.class, () -> GatewayClient.builder(" "));
    assertThrows(IllegalArgumentException.class, () -> plaintext().defaultDeadline(Duration.ZERO));
  }
}
