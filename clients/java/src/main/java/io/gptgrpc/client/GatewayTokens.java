package io.gptgrpc.client;

import io.grpc.CallCredentials;
import io.grpc.Metadata;
import java.util.concurrent.Executor;

/**
 * Bearer tokens as gRPC call credentials: {@code authorization: Bearer <token>}.
 *
 * <p>{@link #of(String, String)} picks the token by RPC: the admin token on the admin RPCs ({@link Rpcs#ADMIN}),
 * the client token on the others; a call whose kind has no token is sent without one. {@link #bearer(String)}
 * sends one token on every call, to override the client's tokens for one call:
 * {@code client.withCallCredentials(GatewayTokens.bearer(token))}.
 *
 * <p>The tokens are sent whatever the transport (the gateway may be plaintext on loopback or behind a mesh): use
 * TLS to a gateway elsewhere. {@link #toString()} never shows them.
 */
public final class GatewayTokens extends CallCredentials {
  /** The metadata key of the token. */
  public static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private final String adminToken; // null: none
  private final String clientToken; // null: none
  private final boolean everyCall;

  private GatewayTokens(String adminToken, String clientToken, boolean everyCall) {
    this.adminToken = adminToken;
    this.clientToken = clientToken;
    this.everyCall = everyCall;
  }

  /** The admin token on admin RPCs, the client token on the others; either may be null (none). */
  public static GatewayTokens of(String adminToken, String clientToken) {
    return new GatewayTokens(checked(adminToken, "admin token"), checked(clientToken, "client token"), false);
  }

  /** One token on every call, whatever the RPC. */
  public static GatewayTokens bearer(String token) {
    if (token == null) {
      throw new IllegalArgumentException("gpt-grpc: the token is null");
    }
    String t = checked(token, "token");
    return new GatewayTokens(t, t, true);
  }

  private static String checked(String token, String what) {
    if (token == null) {
      return null;
    }
    if (token.isEmpty()) {
      throw new IllegalArgumentException("gpt-grpc: the " + what + " is empty");
    }
    for (int i = 0; i < token.length(); i++) {
      char c = token.charAt(i);
      if (c < 0x21 || c > 0x7e) { // printable ASCII without space: what a header value may hold
        throw new IllegalArgumentException("gpt-grpc: the " + what + " holds a character that is not printable ASCII");
      }
    }
    return token;
  }

  /** The token this credential sends with the RPC of that full name, or null. */
  String tokenFor(String fullMethodName) {
    if (everyCall) {
      return clientToken;
    }
    return Rpcs.isAdmin(fullMethodName) ? adminToken : clientToken;
  }

  @Override
  public void applyRequestMetadata(RequestInfo requestInfo, Executor appExecutor, MetadataApplier applier) {
    Metadata headers = new Metadata();
    String token = tokenFor(requestInfo.getMethodDescriptor().getFullMethodName());
    if (token != null) {
      headers.put(AUTHORIZATION, "Bearer " + token);
    }
    applier.apply(headers);
  }

  @Override
  public String toString() {
    return "GatewayTokens{admin=" + (adminToken != null) + ", client=" + (clientToken != null)
        + (everyCall ? ", every call" : "") + "}";
  }
}
