package io.gptgrpc.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.google.protobuf.Descriptors.MethodDescriptor;
import com.google.protobuf.Descriptors.ServiceDescriptor;
import gptgrpc.v1.Gateway;
import java.lang.reflect.Method;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import org.junit.jupiter.api.Test;

/**
 * Every RPC of the proto is classified (admin or data plane, for the tokens) and wrapped by both clients. When
 * the proto gains an RPC, these fail until it is added to {@link Rpcs}, {@link GatewayClient} and
 * {@link AsyncGatewayClient}.
 */
class RpcsTest {
  private static final ServiceDescriptor SERVICE = Gateway.getDescriptor().findServiceByName("GPTService");

  private static String fullName(MethodDescriptor m) {
    return SERVICE.getFullName() + "/" + m.getName();
  }

  private static String javaName(MethodDescriptor m) {
    return Character.toLowerCase(m.getName().charAt(0)) + m.getName().substring(1);
  }

  @Test
  void everyRpcIsClassifiedOnce() {
    List<String> problems = new ArrayList<>();
    for (MethodDescriptor m : SERVICE.getMethods()) {
      if (Rpcs.ADMIN.contains(fullName(m)) == Rpcs.DATA_PLANE.contains(fullName(m))) {
        problems.add(fullName(m) + ": classify it in exactly one of Rpcs.ADMIN and Rpcs.DATA_PLANE");
      }
    }
    assertEquals(List.of(), problems);
    assertEquals(SERVICE.getMethods().size(), Rpcs.ADMIN.size() + Rpcs.DATA_PLANE.size());
    assertTrue(Rpcs.isAdmin("gptgrpc.v1.GPTService/RevokeClient"));
    assertTrue(!Rpcs.isAdmin("gptgrpc.v1.GPTService/GetUsage"));
  }

  @Test
  void everyRpcIsWrappedByBothClients() {
    List<String> problems = new ArrayList<>();
    for (MethodDescriptor m : SERVICE.getMethods()) {
      Class<?> request = messageClass(m.getInputType());
      Class<?> response = messageClass(m.getOutputType());
      boolean streaming = m.isServerStreaming();
      if (streaming) {
        // A stream of deltas then a summary: ChatStream, ConverseStream (a DeltaStream of the RPC's messages).
        Method blocking = find(GatewayClient.class, javaName(m), request, false);
        if (blocking == null || !DeltaStream.class.isAssignableFrom(blocking.getReturnType())) {
          problems.add("GatewayClient." + javaName(m) + "(" + request.getSimpleName() + ") returning a DeltaStream"
              + " of " + response.getSimpleName() + " is missing");
        }
      } else {
        check(problems, GatewayClient.class, javaName(m), request, response);
      }
      Method async = find(AsyncGatewayClient.class, javaName(m), request, streaming);
      if (async == null || async.getReturnType() != CompletableFuture.class) {
        problems.add("AsyncGatewayClient." + javaName(m) + "(" + request.getSimpleName() + ") is missing");
      }
    }
    if (!problems.isEmpty()) {
      fail("RPCs of the proto that the Java clients do not wrap:\n  " + String.join("\n  ", problems));
    }
  }

  private static void check(List<String> problems, Class<?> client, String name, Class<?> request, Class<?> ret) {
    Method m = find(client, name, request, false);
    if (m == null || m.getReturnType() != ret) {
      problems.add(client.getSimpleName() + "." + name + "(" + request.getSimpleName() + ") returning "
          + ret.getSimpleName() + " is missing");
    }
  }

  /** The public method name(request[, callback]) of the class, or null. */
  private static Method find(Class<?> c, String name, Class<?> request, boolean withCallback) {
    for (Method m : c.getMethods()) {
      Class<?>[] p = m.getParameterTypes();
      if (m.getName().equals(name) && p.length == (withCallback ? 2 : 1) && p[0] == request) {
        return m;
      }
    }
    return null;
  }

  private static Class<?> messageClass(com.google.protobuf.Descriptors.Descriptor d) {
    try {
      return Class.forName("gptgrpc.v1.Gateway$" + d.getName());
    } catch (ClassNotFoundException e) {
      throw new AssertionError("no generated class for " + d.getFullName(), e);
    }
  }
}
