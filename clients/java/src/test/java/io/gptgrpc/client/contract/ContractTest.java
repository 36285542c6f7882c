package io.gptgrpc.client.contract;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import gptgrpc.v1.GPTServiceGrpc;
import io.gptgrpc.client.GatewayClient;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.TestFactory;

/**
 * The Java runner of tests/contract/cases.json: one dynamic test per case, in file order, against the gateway the
 * harness started. Run it through the harness:
 *
 * <pre>
 * python tests/contract/harness.py --cwd clients/java -- mvn -B -ntp surefire:test -DexcludedGroups=none -Dgroups=contract
 * </pre>
 *
 * <p>{@code CONTRACT_CASES=<path>} replaces tests/contract/cases.json.
 */
@Tag("contract")
class ContractTest {
  private static GatewayClient client;

  @TestFactory
  List<DynamicTest> cases() throws IOException {
    String target = HarnessEnv.require("GPT_GRPC_TARGET");
    Standin standin = new Standin(HarnessEnv.require("STANDIN_URL"));
    HarnessEnv.require("GPT_GRPC_ADMIN_TOKEN");
    String env = System.getenv("CONTRACT_CASES");
    Path path = Path.of(env != null && !env.isEmpty() ? env : System.getProperty("gptgrpc.contract.cases"));
    JsonObject file = JsonParser.parseString(Files.readString(path)).getAsJsonObject();
    List<JsonElement> cases = file.getAsJsonArray("cases").asList();
    assertTrue(file.get("schema").getAsInt() == 1 && !cases.isEmpty(), path + ": want schema 1 with cases");
    assertEquals(file.get("service").getAsString(), GPTServiceGrpc.SERVICE_NAME, "the cases are for another service");
    Duration defaultTimeout = Duration.ofMillis(file.getAsJsonObject("defaults").get("timeout_ms").getAsLong());

    client = GatewayClient.builder(target).plaintext().build();
    Map<String, String> saved = new HashMap<>(); // variables saved by earlier cases ("save")
    CaseRunner runner = new CaseRunner(client.channel().channel(), GPTServiceGrpc.getServiceDescriptor(), standin, saved);
    Set<String> seen = new HashSet<>();
    List<DynamicTest> tests = new ArrayList<>();
    for (JsonElement e : cases) {
      JsonObject c = e.getAsJsonObject();
      String name = c.get("name").getAsString();
      assertTrue(seen.add(name), "duplicate case name " + name);
      Duration timeout = c.has("timeout_ms") ? Duration.ofMillis(c.get("timeout_ms").getAsLong()) : defaultTimeout;
      tests.add(DynamicTest.dynamicTest(name, () -> {
        try {
          runner.run(c, timeout);
        } catch (AssertionError | RuntimeException err) {
          throw new AssertionError("case " + name + ": " + err.getMessage(), err);
        }
      }));
    }
    return tests;
  }

  @AfterAll
  static void close() {
    if (client != null) {
      client.close();
    }
  }
}
