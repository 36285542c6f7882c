package io.gptgrpc.client.contract;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import gptgrpc.v1.Gateway.ChatCompletionRequest;
import gptgrpc.v1.Gateway.StreamChatCompletionRequest;
import io.gptgrpc.client.ChatStream;
import io.gptgrpc.client.GatewayChannelBuilder;
import io.gptgrpc.client.GatewayClient;
import io.gptgrpc.client.GatewayException;
import io.grpc.Status;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.function.UnaryOperator;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.TestFactory;

/**
 * TLS and mutual TLS end to end: the Java client against a gateway that the harness starts with certificates made
 * for the run. Run it through the harness, once per mode (make contract-test does, with the Go and TypeScript ones):
 *
 * <pre>
 * python tests/contract/harness.py --tls  --cwd clients/java -- mvn -B -ntp surefire:test -DexcludedGroups=none -Dgroups=tls
 * python tests/contract/harness.py --mtls --cwd clients/java -- mvn -B -ntp surefire:test -DexcludedGroups=none -Dgroups=tls
 * </pre>
 */
@Tag("tls")
class TlsContractTest {
  private static final String HOW = "run it through tests/contract/harness.py --tls or --mtls (make contract-test)";
  private static final Duration CALL_TIMEOUT = Duration.ofSeconds(10);
  private static final Duration REFUSED_TIMEOUT = Duration.ofSeconds(5);

  @TestFactory
  List<DynamicTest> tls() {
    String mode = HarnessEnv.require("GPT_GRPC_TLS_MODE");
    assertTrue(mode.equals("tls") || mode.equals("mtls"), "GPT_GRPC_TLS_MODE=" + mode + ", want tls or mtls; " + HOW);
    boolean mtls = mode.equals("mtls");
    String target = HarnessEnv.require("GPT_GRPC_TARGET");
    Path ca = Path.of(HarnessEnv.require("GPT_GRPC_TLS_CA"));
    Path cert = Path.of(HarnessEnv.require("GPT_GRPC_TLS_CERT"));
    Path key = Path.of(HarnessEnv.require("GPT_GRPC_TLS_KEY"));
    Path rogueCert = Path.of(HarnessEnv.require("GPT_GRPC_TLS_ROGUE_CERT"));
    Path rogueKey = Path.of(HarnessEnv.require("GPT_GRPC_TLS_ROGUE_KEY"));
    UnaryOperator<GatewayChannelBuilder> ownCert = b -> mtls ? b.clientCertificate(cert, key) : b;

    List<DynamicTest> tests = new ArrayList<>();
    tests.add(DynamicTest.dynamicTest("trusted client chats over " + mode, () -> {
      try (GatewayClient c = ownCert.apply(GatewayClient.builder(target).caFile(ca))
          .defaultDeadline(CALL_TIMEOUT).build()) {
        String content = c.chatCompletion(ChatCompletionRequest.newBuilder()
            .setModel("gpt-4o-mini").setUserMessage("over " + mode).build()).getContent();
        assertEquals("Echo: over " + mode, content);
        try (ChatStream stream = c.streamChatCompletion(StreamChatCompletionRequest.newBuilder()
            .setModel("gpt-4o-mini").setUserMessage("streamed").build())) {
          assertEquals("Echo: streamed", stream.result().content());
        }
      }
    }));
    tests.add(DynamicTest.dynamicTest("plaintext client refused",
        () -> refused(GatewayClient.builder(target).plaintext())));
    // System roots only: the gateway's certificate does not verify.
    tests.add(DynamicTest.dynamicTest("client without the CA refused",
        () -> refused(ownCert.apply(GatewayClient.builder(target)))));
    if (mtls) {
      tests.add(DynamicTest.dynamicTest("client without a certificate refused",
          () -> refused(GatewayClient.builder(target).caFile(ca))));
      tests.add(DynamicTest.dynamicTest("client with an untrusted certificate refused",
          () -> refused(GatewayClient.builder(target).caFile(ca).clientCertificate(rogueCert, rogueKey))));
    }
    return tests;
  }

  /** A call fails as UNAVAILABLE: the connection (handshake) is refused, so it never reaches the gateway's handlers. */
  private static void refused(GatewayChannelBuilder builder) {
    try (GatewayClient c = builder.defaultDeadline(REFUSED_TIMEOUT).build()) {
      GatewayException e = assertThrows(GatewayException.class, () -> c.countTokens("gpt-4", "hello world"),
          "the call succeeded, want it refused");
      assertEquals(Status.Code.UNAVAILABLE, e.code(), () -> "status " + e.getMessage() + ", want UNAVAILABLE");
      assertEquals("", e.reason());
    }
  }
}
