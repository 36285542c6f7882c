package io.gptgrpc.client.contract;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;

import com.google.gson.JsonElement;
import com.google.gson.JsonParser;
import java.util.Map;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.junit.jupiter.api.Test;

/** The matcher and "save" lookup, on the same patterns as the Go runner's match_test.go. */
class MatchTest {
  private static final JsonElement ACTUAL = JsonParser.parseString("""
      {"content":"Echo: ping","usage":{"total_tokens":"12","estimated":false},
       "attempts":1,"tags":["a","b"],"violations":[{"field":"temperature","description":"0..2"}]}""");

  @ParameterizedTest
  @ValueSource(strings = {
      "{}",
      "{\"content\":\"Echo: ping\"}",
      "{\"usage\":{\"total_tokens\":12}}",
      "{\"usage\":{\"total_tokens\":{\"$gt\":0,\"$lte\":\"12\"}}}",
      "{\"attempts\":1.0}",
      "{\"cost_usd\":{\"$present\":false}}",
      "{\"content\":{\"$present\":true,\"$contains\":\"ping\",\"$len\":10,\"$nonEmpty\":true}}",
      "{\"tags\":[\"b\"],\"violations\":[{\"field\":\"temperature\"}]}",
      "{\"usage\":{\"estimated\":false}}",
  })
  void matches(String pattern) {
    assertNull(Match.mismatch("$", JsonParser.parseString(pattern), ACTUAL));
  }

  @ParameterizedTest
  @ValueSource(strings = {
      "{\"content\":\"Echo: pong\"}",
      "{\"missing\":1}",
      "{\"usage\":{\"total_tokens\":13}}",
      "{\"usage\":{\"total_tokens\":{\"$gt\":12}}}",
      "{\"content\":{\"$present\":false}}",
      "{\"cost_usd\":{\"$gt\":0}}",
      "{\"tags\":[\"c\"]}",
      "{\"violations\":[{\"field\":\"top_p\"}]}",
      "{\"content\":{\"$unknown\":1}}",
      "{\"usage\":{\"estimated\":\"false\"}}",
      "{\"content\":{\"$nonEmpty\":false}}",
  })
  void doesNotMatch(String pattern) {
    assertNotNull(Match.mismatch("$", JsonParser.parseString(pattern), ACTUAL));
  }

  @Test
  void savedValue() {
    JsonElement view = JsonParser.parseString(
        "{\"token\":\"gptk_1\",\"client\":{\"name\":\"c\",\"limits\":{\"requests_per_minute\":1}}}");
    for (Map.Entry<String, String> e : Map.of("token", "gptk_1", "client.name", "c").entrySet()) {
      assertEquals(e.getValue(), Match.savedValue(view, e.getKey()));
    }
    for (String path : new String[] {"missing", "client.missing", "token.deeper", "client.limits.requests_per_minute",
        "client"}) {
      assertThrows(IllegalArgumentException.class, () -> Match.savedValue(view, path), path);
    }
  }
}
