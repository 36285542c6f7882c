package io.gptgrpc.client.contract;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonParser;
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

/** The stand-in upstream's control API (tests/standin): reset, queue faults, read the requests it received. */
final class Standin {
  private static final Duration TIMEOUT = Duration.ofSeconds(10);
  private final HttpClient http = HttpClient.newBuilder().connectTimeout(TIMEOUT).build();
  private final String base;

  Standin(String url) {
    this.base = url.replaceAll("/+$", "");
  }

  void reset() {
    post("/_standin/reset", "{}");
  }

  /** Queues the faults (a JSON array as the stand-in accepts it). */
  void faults(JsonElement faults) {
    post("/_standin/faults", "{\"faults\":" + faults + "}");
  }

  /** The chat requests the stand-in received since the last reset. */
  long chatRequests() {
    JsonElement stats = JsonParser.parseString(send(HttpRequest.newBuilder(uri("/_standin/stats")).GET()));
    return stats.getAsJsonObject().get("requests").getAsLong();
  }

  /** The body of the last chat request the stand-in received since the last reset, or null when none. */
  JsonElement lastChatBody() {
    JsonArray records = JsonParser.parseString(send(HttpRequest.newBuilder(uri("/_standin/requests")).GET()))
        .getAsJsonArray();
    return records.isEmpty() ? null : records.get(records.size() - 1).getAsJsonObject().get("body");
  }

  private void post(String path, String body) {
    send(HttpRequest.newBuilder(uri(path)).header("content-type", "application/json")
        .POST(HttpRequest.BodyPublishers.ofString(body)));
  }

  private URI uri(String path) {
    return URI.create(base + path);
  }

  private String send(HttpRequest.Builder request) {
    HttpRequest req = request.timeout(TIMEOUT).build();
    try {
      HttpResponse<String> res = http.send(req, HttpResponse.BodyHandlers.ofString());
      if (res.statusCode() != 200) {
        throw new AssertionError("stand-in " + req.uri() + ": HTTP " + res.statusCode() + " " + res.body());
      }
      return res.body();
    } catch (IOException e) {
      throw new AssertionError("stand-in " + req.uri() + ": " + e, e);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new AssertionError("interrupted", e);
    }
  }
}
