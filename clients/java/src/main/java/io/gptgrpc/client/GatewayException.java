package io.gptgrpc.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.QuotaFailure;
import com.google.rpc.RequestInfo;
import com.google.rpc.RetryInfo;
import gptgrpc.v1.Gateway.ErrorReason;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * A failed call to the gateway, with the {@code google.rpc.Status} details of its {@code grpc-status-details-bin}
 * trailer decoded: the ErrorInfo reason (an {@link ErrorReason} name such as {@code "UPSTREAM_RATE_LIMITED"}), the
 * retry delay (RetryInfo), the field violations (BadRequest), the quota violations (QuotaFailure) and the request id.
 *
 * <p>A failure that never reached the gateway (connection refused, TLS handshake failed) is {@code UNAVAILABLE}
 * with no reason. Branch on {@link #reason()}, not on the message.
 */
public final class GatewayException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  /** The ErrorInfo domain of the gateway's own errors. */
  public static final String ERROR_DOMAIN = "gpt-grpc";
  /** The trailer that holds the gateway's id of the call. */
  public static final Metadata.Key<String> REQUEST_ID_TRAILER =
      Metadata.Key.of("x-request-id", Metadata.ASCII_STRING_MARSHALLER);
  private static final List<String> REQUEST_ID_KEYS = List.of("request_id", "request-id", "x-request-id");

  private final transient Status status;
  private final transient Metadata trailers; // null when the call had none
  private final transient com.google.rpc.Status details; // null when the status carried none
  private final transient ErrorInfo errorInfo; // null when absent
  private final transient RetryInfo retryInfo; // null when absent
  private final List<BadRequest.FieldViolation> fieldViolations;
  private final List<QuotaFailure.Violation> quotaViolations;
  private final String requestId; // null when unknown

  /** The details of a google.rpc.Status, unpacked once. */
  private record Decoded(
      ErrorInfo errorInfo,
      RetryInfo retryInfo,
      RequestInfo requestInfo,
      List<BadRequest.FieldViolation> fieldViolations,
      List<QuotaFailure.Violation> quotaViolations) {

    static Decoded of(com.google.rpc.Status details) {
      ErrorInfo info = null;
      RetryInfo retry = null;
      RequestInfo request = null;
      List<BadRequest.FieldViolation> violations = new ArrayList<>();
      List<QuotaFailure.Violation> quota = new ArrayList<>();
      if (details != null) {
        for (Any any : details.getDetailsList()) {
          try {
            if (any.is(ErrorInfo.class) && info == null) {
              info = any.unpack(ErrorInfo.class);
            } else if (any.is(RetryInfo.class) && retry == null) {
              retry = any.unpack(RetryInfo.class);
            } else if (any.is(BadRequest.class)) {
              violations.addAll(any.unpack(BadRequest.class).getFieldViolationsList());
            } else if (any.is(QuotaFailure.class)) {
              quota.addAll(any.unpack(QuotaFailure.class).getViolationsList());
            } else if (any.is(RequestInfo.class) && request == null) {
              request = any.unpack(RequestInfo.class);
            }
          } catch (InvalidProtocolBufferException e) {
            // A malformed detail must not hide the error itself: skip it.
          }
        }
      }
      return new Decoded(info, retry, request, List.copyOf(violations), List.copyOf(quota));
    }
  }

  private GatewayException(
      Status status, Metadata trailers, com.google.rpc.Status details, Decoded decoded, Throwable cause) {
    super(describe(status, decoded.errorInfo()), cause);
    this.status = status;
    this.trailers = trailers;
    this.details = details;
    this.errorInfo = decoded.errorInfo();
    this.retryInfo = decoded.retryInfo();
    this.fieldViolations = decoded.fieldViolations();
    this.quotaViolations = decoded.quotaViolations();
    this.requestId = requestId(decoded.errorInfo(), decoded.requestInfo(), trailers);
  }

  /**
   * Decodes a failure of a grpc-java call ({@link io.grpc.StatusRuntimeException}, {@link io.grpc.StatusException},
   * or anything that has one as its cause); a GatewayException is returned as it is.
   */
  public static GatewayException from(Throwable t) {
    if (t instanceof GatewayException g) {
      return g;
    }
    Status status = Status.fromThrowable(t);
    Metadata trailers = Status.trailersFromThrowable(t);
    com.google.rpc.Status details = null;
    try {
      details = StatusProto.fromThrowable(t);
    } catch (RuntimeException e) {
      // A trailer that does not parse (or disagrees with the status code) leaves the error without details.
    }
    return new GatewayException(status, trailers, details, Decoded.of(details), t);
  }

  /** The gRPC status code. */
  public Status.Code code() {
    return status.getCode();
  }

  /** The gRPC status (code, description, cause). */
  public Status status() {
    return status;
  }

  /** The status message, without the code. */
  public String description() {
    return status.getDescription() == null ? "" : status.getDescription();
  }

  /** The ErrorInfo reason, an {@link ErrorReason} name; "" when the status carries no ErrorInfo. */
  public String reason() {
    return errorInfo == null ? "" : errorInfo.getReason();
  }

  /** The typed reason; {@code ERROR_REASON_UNSPECIFIED} when absent, not the gateway's, or unknown to this version. */
  public ErrorReason errorReason() {
    if (errorInfo == null || !ERROR_DOMAIN.equals(errorInfo.getDomain())) {
      return ErrorReason.ERROR_REASON_UNSPECIFIED;
    }
    try {
      return ErrorReason.valueOf(errorInfo.getReason());
    } catch (IllegalArgumentException e) {
      return ErrorReason.ERROR_REASON_UNSPECIFIED;
    }
  }

  /** The ErrorInfo (domain, reason, metadata such as http_status and request_id), if any. */
  public Optional<ErrorInfo> errorInfo() {
    return Optional.ofNullable(errorInfo);
  }

  /** ErrorInfo.metadata (empty without ErrorInfo). */
  public Map<String, String> metadata() {
    return errorInfo == null ? Map.of() : errorInfo.getMetadataMap();
  }

  /** How long to wait before retrying, from RetryInfo; empty when the gateway does not suggest a retry. */
  public Optional<Duration> retryDelay() {
    if (retryInfo == null) {
      return Optional.empty();
    }
    com.google.protobuf.Duration d = retryInfo.getRetryDelay();
    return Optional.of(Duration.ofSeconds(d.getSeconds(), d.getNanos()));
  }

  /** Whether the gateway suggested retrying later (it sent RetryInfo). */
  public boolean isRetryable() {
    return retryInfo != null;
  }

  /** The RetryInfo, if any. */
  public Optional<RetryInfo> retryInfo() {
    return Optional.ofNullable(retryInfo);
  }

  /** The invalid fields (BadRequest), empty when none. */
  public List<BadRequest.FieldViolation> fieldViolations() {
    return fieldViolations;
  }

  /** The quota violations (QuotaFailure, with CLIENT_BUDGET_EXCEEDED), empty when none. */
  public List<QuotaFailure.Violation> quotaViolations() {
    return quotaViolations;
  }

  /**
   * The request id: from ErrorInfo metadata ({@code request_id}, the upstream's id on upstream errors), else
   * RequestInfo, else the {@code x-request-id} trailer (the gateway's id of the call); empty when unknown.
   */
  public Optional<String> requestId() {
    return Optional.ofNullable(requestId);
  }

  /** The decoded {@code google.rpc.Status}, if the call carried one. */
  public Optional<com.google.rpc.Status> statusDetails() {
    return Optional.ofNullable(details);
  }

  /** The call's trailers, if known. */
  public Optional<Metadata> trailers() {
    return Optional.ofNullable(trailers);
  }

  private static String requestId(ErrorInfo info, RequestInfo request, Metadata trailers) {
    if (info != null) {
      for (String key : REQUEST_ID_KEYS) {
        String v = info.getMetadataMap().get(key);
        if (v != null && !v.isEmpty()) {
          return v;
        }
      }
    }
    if (request != null && !request.getRequestId().isEmpty()) {
      return request.getRequestId();
    }
    if (trailers != null) {
      String v = trailers.get(REQUEST_ID_TRAILER);
      if (v != null && !v.isEmpty()) {
        return v;
      }
    }
    return null;
  }

  private static String describe(Status status, ErrorInfo info) {
    String reason = info == null ? "" : " " + info.getReason();
    String message = status.getDescription() == null ? "" : ": " + status.getDescription();
    return status.getCode() + reason + message;
  }
}
