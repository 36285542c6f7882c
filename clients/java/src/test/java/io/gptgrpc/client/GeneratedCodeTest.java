package io.gptgrpc.client;

import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.google.protobuf.DescriptorProtos.DescriptorProto;
import com.google.protobuf.DescriptorProtos.EnumDescriptorProto;
import com.google.protobuf.DescriptorProtos.FileDescriptorProto;
import com.google.protobuf.DescriptorProtos.FileDescriptorSet;
import com.google.protobuf.DescriptorProtos.ServiceDescriptorProto;
import com.google.protobuf.Descriptors.FileDescriptor;
import com.google.protobuf.Duration;
import gptgrpc.v1.GPTServiceGrpc;
import io.grpc.protobuf.ProtoFileDescriptorSupplier;
import java.io.IOException;
import java.io.InputStream;
import java.net.URISyntaxException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.Enumeration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;
import java.util.jar.JarEntry;
import java.util.jar.JarFile;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Freshness of the generated Java code. Nothing generated is committed: protobuf-maven-plugin generates the stubs
 * from the repository's proto/ at build time, and skips that when the generated files are newer than the .proto
 * files (checkStaleness). This test makes sure that the classes under test are those of proto/ as it is now: it
 * compiles proto/ afresh with the same protoc and compares each file's descriptor with the one embedded in the
 * generated classes. It fails when the build used other sources or a stale target/ (e.g. proto/ changed and only
 * the tests were rerun), and names what differs.
 */
class GeneratedCodeTest {
  private static final long PROTOC_TIMEOUT_S = 60;

  @Test
  void generatedCodeMatchesProtoDir(@TempDir Path tmp) throws Exception {
    Path protoDir = Path.of(property("gptgrpc.proto.dir")).toRealPath();
    Map<String, FileDescriptorProto> fresh = compile(protoDir, tmp);
    Map<String, FileDescriptorProto> generated = generatedFiles();
    List<String> problems = new ArrayList<>();
    for (Map.Entry<String, FileDescriptorProto> e : fresh.entrySet()) {
      FileDescriptorProto have = generated.get(e.getKey());
      if (have == null) {
        problems.add(e.getKey() + ": no generated Java reaches it from GPTService (import it, or check it here)");
      } else {
        problems.addAll(differences(e.getKey(), normalized(e.getValue()), normalized(have)));
      }
    }
    for (String name : generated.keySet()) {
      if (!fresh.containsKey(name)) {
        problems.add(name + ": generated, but not in " + protoDir + " any more");
      }
    }
    if (!problems.isEmpty()) {
      fail("the generated Java code does not match proto/: rebuild it (make proto, or mvn clean test)\n  "
          + String.join("\n  ", problems));
    }
  }

  /** The gptgrpc files of the generated code: GPTService's file and its imports outside google/protobuf. */
  private static Map<String, FileDescriptorProto> generatedFiles() {
    Map<String, FileDescriptorProto> files = new TreeMap<>();
    FileDescriptor root =
        ((ProtoFileDescriptorSupplier) GPTServiceGrpc.getServiceDescriptor().getSchemaDescriptor()).getFileDescriptor();
    List<FileDescriptor> todo = new ArrayList<>(List.of(root));
    while (!todo.isEmpty()) {
      FileDescriptor f = todo.remove(todo.size() - 1);
      if (!f.getName().startsWith("google/protobuf/") && files.put(f.getName(), f.toProto()) == null) {
        todo.addAll(f.getDependencies());
      }
    }
    return files;
  }

  /** Every .proto under protoDir compiled by protoc into descriptors, by file name. */
  private static Map<String, FileDescriptorProto> compile(Path protoDir, Path tmp) throws Exception {
    Path protoc = tmp.resolve("protoc");
    Files.copy(Path.of(property("gptgrpc.protoc")), protoc);
    Files.setPosixFilePermissions(protoc, PosixFilePermissions.fromString("rwx------"));
    Path include = tmp.resolve("include");
    extractWellKnownTypes(include);
    List<String> sources;
    try (Stream<Path> walk = Files.walk(protoDir)) {
      sources = walk.filter(p -> p.toString().endsWith(".proto")).map(p -> protoDir.relativize(p).toString())
          .sorted().toList();
    }
    assertTrue(!sources.isEmpty(), "no .proto file under " + protoDir);
    Path out = tmp.resolve("fresh.binpb");
    List<String> argv = new ArrayList<>(List.of(protoc.toString(), "-I" + protoDir, "-I" + include,
        "--descriptor_set_out=" + out));
    argv.addAll(sources);
    Process p = new ProcessBuilder(argv).directory(protoDir.toFile()).redirectErrorStream(true).start();
    if (!p.waitFor(PROTOC_TIMEOUT_S, TimeUnit.SECONDS)) {
      p.destroyForcibly();
      fail("protoc did not finish in " + PROTOC_TIMEOUT_S + " s");
    }
    String output = new String(p.getInputStream().readAllBytes());
    if (p.exitValue() != 0) {
      fail("protoc failed on proto/:\n" + output);
    }
    Map<String, FileDescriptorProto> files = new LinkedHashMap<>();
    for (FileDescriptorProto f : FileDescriptorSet.parseFrom(Files.readAllBytes(out)).getFileList()) {
      files.put(f.getName(), f);
    }
    return files;
  }

  /** google/protobuf/*.proto from the protobuf-java jar (protoc's own include files). */
  private static void extractWellKnownTypes(Path include) throws IOException, URISyntaxException {
    Path jar = Path.of(Duration.class.getProtectionDomain().getCodeSource().getLocation().toURI());
    try (JarFile jf = new JarFile(jar.toFile())) {
      Enumeration<JarEntry> entries = jf.entries();
      while (entries.hasMoreElements()) {
        JarEntry e = entries.nextElement();
        if (e.getName().startsWith("google/protobuf/") && e.getName().endsWith(".proto")) {
          Path dest = include.resolve(e.getName());
          Files.createDirectories(dest.getParent());
          try (InputStream in = jf.getInputStream(e)) {
            Files.copy(in, dest);
          }
        }
      }
    }
  }

  /** What protoc writes but the Java generator does not embed: source info, and json_name. */
  private static FileDescriptorProto normalized(FileDescriptorProto f) {
    FileDescriptorProto.Builder b = f.toBuilder().clearSourceCodeInfo();
    for (DescriptorProto.Builder m : b.getMessageTypeBuilderList()) {
      clearJsonNames(m);
    }
    return b.build();
  }

  private static void clearJsonNames(DescriptorProto.Builder m) {
    m.getFieldBuilderList().forEach(f -> f.clearJsonName());
    m.getExtensionBuilderList().forEach(f -> f.clearJsonName());
    m.getNestedTypeBuilderList().forEach(GeneratedCodeTest::clearJsonNames);
  }

  /** The messages, enums and services that differ (or the whole file, when only its header does). */
  private static List<String> differences(String file, FileDescriptorProto want, FileDescriptorProto have) {
    List<String> out = new ArrayList<>();
    if (want.equals(have)) {
      return out;
    }
    diff(out, file, "message", names(want.getMessageTypeList()), names(have.getMessageTypeList()));
    diff(out, file, "enum", enumNames(want.getEnumTypeList()), enumNames(have.getEnumTypeList()));
    diff(out, file, "service", serviceNames(want.getServiceList()), serviceNames(have.getServiceList()));
    if (out.isEmpty()) {
      out.add(file + ": options, imports or package differ");
    }
    return out;
  }

  private static void diff(List<String> out, String file, String kind, Map<String, ?> want, Map<String, ?> have) {
    for (Map.Entry<String, ?> e : want.entrySet()) {
      Object h = have.get(e.getKey());
      if (h == null) {
        out.add(file + ": " + kind + " " + e.getKey() + " is missing from the generated code");
      } else if (!h.equals(e.getValue())) {
        out.add(file + ": " + kind + " " + e.getKey() + " differs from proto/");
      }
    }
    for (String name : have.keySet()) {
      if (!want.containsKey(name)) {
        out.add(file + ": " + kind + " " + name + " is generated but no longer in proto/");
      }
    }
  }

  private static Map<String, DescriptorProto> names(List<DescriptorProto> list) {
    Map<String, DescriptorProto> m = new TreeMap<>();
    list.forEach(d -> m.put(d.getName(), d));
    return m;
  }

  private static Map<String, EnumDescriptorProto> enumNames(List<EnumDescriptorProto> list) {
    Map<String, EnumDescriptorProto> m = new TreeMap<>();
    list.forEach(d -> m.put(d.getName(), d));
    return m;
  }

  private static Map<String, ServiceDescriptorProto> serviceNames(List<ServiceDescriptorProto> list) {
    Map<String, ServiceDescriptorProto> m = new TreeMap<>();
    list.forEach(d -> m.put(d.getName(), d));
    return m;
  }

  private static String property(String name) {
    String v = System.getProperty(name);
    if (v == null || v.isEmpty()) {
      fail("system property " + name + " is not set: run the tests with Maven (clients/java/pom.xml sets it)");
    }
    return v;
  }
}
