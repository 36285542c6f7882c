package io.gptgrpc.client.contract;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import com.google.protobuf.Any;
import com.google.protobuf.Descriptors.EnumValueDescriptor;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Message;
import com.google.protobuf.MessageOrBuilder;
import com.google.protobuf.util.JsonFormat;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import gptgrpc.v1.Gateway;
import io.gptgrpc.client.GatewayException;
import io.grpc.Channel;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.ServiceDescriptor;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Runs one case of tests/contract/cases.json, following tests/contract/README.md: reset the stand-in, queue the
 * faults, make the call with the case's metadata and deadline, check "expect", then save values for later cases.
 * Data-driven: any RPC of the service works without code here.
 */
final class CaseRunner {
  private static final Pattern VAR_REF = Pattern.compile("\\$\\{([A-Za-z_][A-Za-z0-9_]*)}");
  private static final Pattern VAR_NAME = Pattern.compile("[A-Za-z_][A-Za-z0-9_]*");
  private static final Pattern HTTP_STATUS = Pattern.compile("[1-5][0-9][0-9]");
  private static final JsonFormat.Parser JSON_IN = JsonFormat.parser();
  private static final JsonFormat.Printer JSON_OUT =
      JsonFormat.printer().preservingProtoFieldNames().alwaysPrintFieldsWithNoPresence();

  private final Channel channel;
  private final ServiceDescriptor service;
  private final Standin standin;
  private final Map<String, String> saved;

  /** {@code saved} holds the variables of earlier cases ("save"), and receives this case's. */
  CaseRunner(Channel channel, ServiceDescriptor service, Standin standin, Map<String, String> saved) {
    this.channel = channel;
    this.service = service;
    this.standin = standin;
    this.saved = saved;
  }

  void run(JsonObject c, Duration timeout) throws InvalidProtocolBufferException {
    JsonObject expect = c.getAsJsonObject("expect");
    Status.Code wantCode = Status.Code.valueOf(expect.get("code").getAsString());
    String wantReason = expect.has("reason") ? expect.get("reason").getAsString() : "";
    if (wantCode != Status.Code.OK && wantReason.isEmpty()) {
      throw new AssertionError("expect.reason is required with code " + wantCode);
    }
    MethodDescriptor<?, ?> method = method(c.get("rpc").getAsString());
    JsonObject save = c.has("save") ? c.getAsJsonObject("save") : new JsonObject();
    if (save.size() > 0 && (wantCode != Status.Code.OK || method.getType() != MethodDescriptor.MethodType.UNARY)) {
      throw new AssertionError("save needs expect.code OK on a unary RPC");
    }
    for (String name : save.keySet()) {
      if (!VAR_NAME.matcher(name).matches()) {
        throw new AssertionError("save: bad variable name " + name);
      }
    }
    Message.Builder request = prototype(method).newBuilderForType();
    if (c.has("request")) {
      JSON_IN.merge(c.get("request").toString(), request);
    }

    // 1-2: reset the stand-in and queue the faults.
    standin.reset();
    if (c.has("faults") && c.get("faults").isJsonArray() && !c.getAsJsonArray("faults").isEmpty()) {
      standin.faults(c.get("faults"));
    }

    // 3: call.
    Calls.Outcome out = Calls.invoke(channel, method, request.build(), headers(c), timeout);

    // 4: check; every problem is reported, the status first.
    List<String> problems = new ArrayList<>();
    Status st = out.status();
    if (st.getCode() != wantCode) {
      throw new AssertionError("status " + st.getCode() + " (" + st.getDescription() + "), want " + wantCode
          + "; error view " + errorView(out));
    }
    if (wantCode == Status.Code.OK) {
      if (expect.has("stream")) {
        checkStream(out.messages(), expect.getAsJsonObject("stream"), problems);
      } else if (expect.has("response")) {
        if (out.messages().size() != 1) {
          throw new AssertionError("want one response, got " + out.messages().size());
        }
        match("response", expect.get("response"), view(out.messages().get(0)), problems);
      }
    } else {
      JsonObject view = errorView(out);
      checkErrorInvariants(out, view, problems);
      JsonElement info = view.get("error_info");
      String reason = info != null ? info.getAsJsonObject().get("reason").getAsString() : "";
      if (!reason.equals(wantReason)) {
        problems.add("ErrorInfo.reason = " + reason + ", want " + wantReason + " (status " + st.getDescription() + ")");
      }
      if (expect.has("error")) {
        match("error", expect.get("error"), view, problems);
      }
    }
    if (expect.has("upstream_chat_requests")) {
      long want = expect.get("upstream_chat_requests").getAsLong();
      long got = standin.chatRequests();
      if (got != want) {
        problems.add("the stand-in received " + got + " chat requests, want " + want);
      }
    }
    if (expect.has("upstream_request")) {
      JsonElement body = standin.lastChatBody();
      if (body == null) {
        problems.add("the stand-in recorded no chat request");
      } else {
        match("upstream_request", expect.get("upstream_request"), body, problems);
      }
    }
    if (!problems.isEmpty()) {
      throw new AssertionError(String.join("\n", problems));
    }

    // 5: save values for later cases (only when everything above passed).
    if (save.size() > 0) {
      JsonElement view = view(out.messages().get(0));
      for (String name : save.keySet()) {
        try {
          saved.put(name, Match.savedValue(view, save.get(name).getAsString()));
        } catch (IllegalArgumentException e) {
          throw new AssertionError("save " + name + ": " + e.getMessage(), e);
        }
      }
    }
  }

  private MethodDescriptor<?, ?> method(String rpc) {
    String full = MethodDescriptor.generateFullMethodName(service.getName(), rpc);
    for (MethodDescriptor<?, ?> m : service.getMethods()) {
      if (m.getFullMethodName().equals(full)) {
        return m;
      }
    }
    throw new AssertionError("rpc " + rpc + " is not a method of " + service.getName());
  }

  private static Message prototype(MethodDescriptor<?, ?> method) {
    if (method.getRequestMarshaller() instanceof MethodDescriptor.PrototypeMarshaller<?> p
        && p.getMessagePrototype() instanceof Message m) {
      return m;
    }
    throw new AssertionError(method.getFullMethodName() + " has no protobuf request prototype");
  }

  /** The case's metadata, with ${NAME} expanded: a variable saved by an earlier case, else an environment one. */
  private Metadata headers(JsonObject c) {
    Metadata headers = new Metadata();
    if (!c.has("metadata")) {
      return headers;
    }
    for (Map.Entry<String, JsonElement> e : c.getAsJsonObject("metadata").entrySet()) {
      if (e.getKey().endsWith(Metadata.BINARY_HEADER_SUFFIX)) {
        throw new AssertionError("metadata " + e.getKey() + ": binary metadata is not supported by the cases");
      }
      headers.put(Metadata.Key.of(e.getKey(), Metadata.ASCII_STRING_MARSHALLER), expand(e.getValue().getAsString()));
    }
    return headers;
  }

  private String expand(String value) {
    Matcher m = VAR_REF.matcher(value);
    StringBuilder out = new StringBuilder();
    while (m.find()) {
      String name = m.group(1);
      String v = saved.containsKey(name) ? saved.get(name) : System.getenv(name);
      if (v == null) {
        throw new AssertionError("metadata refers to ${" + name + "}, which is neither saved by an earlier case nor set");
      }
      m.appendReplacement(out, Matcher.quoteReplacement(v));
    }
    m.appendTail(out);
    return out.toString();
  }

  private static void checkStream(List<Message> messages, JsonObject want, List<String> problems) {
    if (messages.isEmpty()) {
      throw new AssertionError("the stream sent no message");
    }
    StringBuilder content = new StringBuilder();
    int deltas = 0;
    JsonElement summary = null;
    for (int i = 0; i < messages.size(); i++) {
      JsonObject m = view(messages.get(i)).getAsJsonObject();
      boolean last = i == messages.size() - 1;
      if (m.has("delta") && !last) {
        deltas++;
        JsonElement c = m.getAsJsonObject("delta").get("content");
        content.append(c == null ? "" : c.getAsString());
      } else if (m.has("summary") && last) {
        summary = m.get("summary");
      } else {
        throw new AssertionError("stream message " + (i + 1) + " of " + messages.size() + " is " + Match.show(m)
            + ": want deltas, then one summary last");
      }
    }
    if (want.has("content") && !content.toString().equals(want.get("content").getAsString())) {
      problems.add("deltas concatenate to \"" + content + "\", want " + Match.show(want.get("content")));
    }
    int minDeltas = want.has("min_deltas") ? want.get("min_deltas").getAsInt() : 0;
    if (deltas < minDeltas) {
      problems.add(deltas + " deltas, want at least " + minDeltas);
    }
    if (want.has("summary")) {
      match("summary", want.get("summary"), summary, problems);
    }
  }

  /** The error view of tests/contract/README.md: code, message, and the first detail of each kind. */
  private static JsonObject errorView(Calls.Outcome out) {
    JsonObject view = new JsonObject();
    view.addProperty("code", out.status().getCode().name());
    view.addProperty("message", out.status().getDescription() == null ? "" : out.status().getDescription());
    for (Any any : details(out).getDetailsList()) {
      String key = null;
      Class<? extends Message> type = null;
      if (any.is(ErrorInfo.class)) {
        key = "error_info";
        type = ErrorInfo.class;
      } else if (any.is(RetryInfo.class)) {
        key = "retry_info";
        type = RetryInfo.class;
      } else if (any.is(BadRequest.class)) {
        key = "bad_request";
        type = BadRequest.class;
      }
      if (key != null && !view.has(key)) {
        try {
          view.add(key, view(any.unpack(type)));
        } catch (InvalidProtocolBufferException e) {
          throw new AssertionError("status detail " + any.getTypeUrl() + " does not parse", e);
        }
      }
    }
    return view;
  }

  private static com.google.rpc.Status details(Calls.Outcome out) {
    com.google.rpc.Status details = StatusProto.fromStatusAndTrailers(out.status(), out.trailers());
    return details == null ? com.google.rpc.Status.getDefaultInstance() : details;
  }

  private static void checkErrorInvariants(Calls.Outcome out, JsonObject view, List<String> problems) {
    long infos = details(out).getDetailsList().stream().filter(a -> a.is(ErrorInfo.class)).count();
    if (infos != 1) {
      throw new AssertionError("the status carries " + infos + " google.rpc.ErrorInfo, want exactly 1 (status "
          + out.status().getDescription() + ")");
    }
    JsonObject info = view.getAsJsonObject("error_info");
    if (!GatewayException.ERROR_DOMAIN.equals(info.get("domain").getAsString())) {
      problems.add("ErrorInfo.domain = " + info.get("domain") + ", want " + GatewayException.ERROR_DOMAIN);
    }
    String reason = info.get("reason").getAsString();
    EnumValueDescriptor value = Gateway.ErrorReason.getDescriptor().findValueByName(reason);
    if (value == null || value.getNumber() == 0) {
      problems.add("ErrorInfo.reason " + reason + " is not a gptgrpc.v1.ErrorReason name");
    }
    JsonObject metadata = info.has("metadata") ? info.getAsJsonObject("metadata") : new JsonObject();
    if (metadata.has("http_status") && !HTTP_STATUS.matcher(metadata.get("http_status").getAsString()).matches()) {
      problems.add("ErrorInfo.metadata.http_status = " + metadata.get("http_status") + ", want a 3-digit HTTP status");
    }
  }

  /** The proto3 JSON view of a message: proto field names, implicit-presence fields always emitted. */
  static JsonElement view(MessageOrBuilder message) {
    try {
      return JsonParser.parseString(JSON_OUT.print(message));
    } catch (InvalidProtocolBufferException e) {
      throw new AssertionError("JSON of " + message.getDescriptorForType().getFullName(), e);
    }
  }

  private static void match(String what, JsonElement pattern, JsonElement actual, List<String> problems) {
    String err = Match.mismatch(what, pattern, actual);
    if (err != null) {
      problems.add(err + "\nactual " + what + ": " + Match.show(actual));
    }
  }
}
