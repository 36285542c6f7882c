package io.gptgrpc.client.contract;

import com.google.gson.Gson;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonPrimitive;
import java.math.BigDecimal;
import java.util.Map;
import java.util.TreeMap;

/**
 * The pattern matcher of tests/contract/README.md ("Patterns"), over Gson trees (numbers kept exact), and the
 * "save" path lookup. Mirrors clients/go/internal/contract/match.go.
 */
public final class Match {
  private static final Gson GSON = new Gson();

  private Match() {}

  /** Why {@code actual} does not match {@code pattern}: null when it matches. {@code path} names the value. */
  public static String mismatch(String path, JsonElement pattern, JsonElement actual) {
    if (pattern.isJsonObject()) {
      JsonObject p = pattern.getAsJsonObject();
      if (isMatcher(p)) {
        return matcher(path, p, actual, actual != null);
      }
      if (actual == null || !actual.isJsonObject()) {
        return path + ": want an object, got " + show(actual);
      }
      JsonObject obj = actual.getAsJsonObject();
      for (Map.Entry<String, JsonElement> e : sorted(p).entrySet()) {
        String sub = path + "." + e.getKey();
        JsonElement want = e.getValue();
        JsonElement got = obj.get(e.getKey());
        if (want.isJsonObject() && isMatcher(want.getAsJsonObject())) {
          String err = matcher(sub, want.getAsJsonObject(), got, obj.has(e.getKey()));
          if (err != null) {
            return err;
          }
          continue;
        }
        if (!obj.has(e.getKey())) {
          return sub + ": missing (want " + show(want) + ")";
        }
        String err = mismatch(sub, want, got);
        if (err != null) {
          return err;
        }
      }
      return null;
    }
    if (pattern.isJsonArray()) {
      if (actual == null || !actual.isJsonArray()) {
        return path + ": want an array, got " + show(actual);
      }
      JsonArray arr = actual.getAsJsonArray();
      int i = 0;
      for (JsonElement want : pattern.getAsJsonArray()) {
        boolean found = false;
        for (JsonElement v : arr) {
          if (mismatch("", want, v) == null) {
            found = true;
            break;
          }
        }
        if (!found) {
          return path + "[" + i + "]: no element matches " + show(want) + " in " + show(actual);
        }
        i++;
      }
      return null;
    }
    if (pattern.isJsonPrimitive() && pattern.getAsJsonPrimitive().isNumber()) {
      BigDecimal want = number(pattern);
      BigDecimal got = number(actual);
      if (got == null || want.compareTo(got) != 0) {
        return path + ": want " + show(pattern) + ", got " + show(actual);
      }
      return null;
    }
    // A string, boolean or null: equal (same JSON type and value).
    if (actual == null || !pattern.equals(actual)) {
      return path + ": want " + show(pattern) + ", got " + show(actual);
    }
    return null;
  }

  private static boolean isMatcher(JsonObject o) {
    if (o.size() == 0) {
      return false;
    }
    for (String k : o.keySet()) {
      if (!k.startsWith("$")) {
        return false;
      }
    }
    return true;
  }

  private static String matcher(String path, JsonObject m, JsonElement actual, boolean present) {
    if (m.has("$present")) {
      boolean want = m.get("$present").getAsBoolean();
      if (want != present) {
        return present ? path + ": want absent, got " + show(actual) : path + ": missing";
      }
    }
    if (!present) {
      return m.size() == 1 && m.has("$present") ? null : path + ": missing (want " + show(m) + ")";
    }
    for (Map.Entry<String, JsonElement> e : sorted(m).entrySet()) {
      String k = e.getKey();
      JsonElement arg = e.getValue();
      switch (k) {
        case "$present" -> { }
        case "$gt", "$gte", "$lt", "$lte" -> {
          BigDecimal want = number(arg);
          BigDecimal got = number(actual);
          if (want == null || got == null) {
            return path + ": " + k + " needs numbers, got " + show(actual);
          }
          int c = got.compareTo(want);
          boolean ok = switch (k) {
            case "$gt" -> c > 0;
            case "$gte" -> c >= 0;
            case "$lt" -> c < 0;
            default -> c <= 0;
          };
          if (!ok) {
            return path + ": want " + k + " " + show(arg) + ", got " + show(actual);
          }
        }
        case "$nonEmpty" -> {
          boolean want = arg.isJsonPrimitive() && arg.getAsJsonPrimitive().isBoolean() && arg.getAsBoolean();
          if ((length(actual) > 0) != want) {
            return path + ": want $nonEmpty=" + show(arg) + ", got " + show(actual);
          }
        }
        case "$contains" -> {
          String sub = arg.isJsonPrimitive() ? arg.getAsString() : "";
          if (!isString(actual) || !actual.getAsString().contains(sub)) {
            return path + ": want a string containing " + show(arg) + ", got " + show(actual);
          }
        }
        case "$len" -> {
          BigDecimal want = number(arg);
          boolean ok = want != null && want.stripTrailingZeros().scale() <= 0
              && length(actual) == want.intValueExact();
          if (!ok) {
            return path + ": want length " + show(arg) + ", got " + show(actual);
          }
        }
        default -> {
          return path + ": unknown matcher " + k;
        }
      }
    }
    return null;
  }

  /** A JSON number or numeric string (int64 in proto3 JSON) as an exact decimal; null otherwise. */
  static BigDecimal number(JsonElement v) {
    if (v == null || !v.isJsonPrimitive()) {
      return null;
    }
    JsonPrimitive p = v.getAsJsonPrimitive();
    if (!p.isNumber() && !p.isString()) {
      return null;
    }
    try {
      return new BigDecimal(p.getAsString());
    } catch (NumberFormatException e) {
      return null;
    }
  }

  private static boolean isString(JsonElement v) {
    return v != null && v.isJsonPrimitive() && v.getAsJsonPrimitive().isString();
  }

  private static int length(JsonElement v) {
    if (isString(v)) {
      return v.getAsString().codePointCount(0, v.getAsString().length());
    }
    if (v != null && v.isJsonArray()) {
      return v.getAsJsonArray().size();
    }
    if (v != null && v.isJsonObject()) {
      return v.getAsJsonObject().size();
    }
    return -1;
  }

  private static Map<String, JsonElement> sorted(JsonObject o) {
    return new TreeMap<>(o.asMap());
  }

  /** Compact JSON of a value, "null" for JSON null, "(absent)" for a missing one. */
  static String show(JsonElement v) {
    return v == null ? "(absent)" : GSON.toJson(v);
  }

  /**
   * The string at {@code path} (dotted proto field names, e.g. "client.token_prefix") of a response's JSON view:
   * the value a case's "save" stores for later cases.
   *
   * @throws IllegalArgumentException when the path is missing or not a string (naming fields, never values:
   *     they may be secrets)
   */
  public static String savedValue(JsonElement view, String path) {
    JsonElement v = view;
    for (String key : path.split("\\.", -1)) {
      if (v == null || !v.isJsonObject()) {
        throw new IllegalArgumentException("the response has no field \"" + path + "\" (" + key + " is not in a message)");
      }
      JsonObject obj = v.getAsJsonObject();
      if (!obj.has(key)) {
        throw new IllegalArgumentException("the response has no field \"" + path + "\" (fields there: "
            + String.join(", ", new TreeMap<>(obj.asMap()).keySet()) + ")");
      }
      v = obj.get(key);
    }
    if (!isString(v)) {
      throw new IllegalArgumentException(path + " is not a string");
    }
    return v.getAsString();
  }
}
