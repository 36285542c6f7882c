package io.gptgrpc.client;

import com.google.protobuf.ByteString;
import gptgrpc.v1.Gateway.AudioFormat;
import gptgrpc.v1.Gateway.AudioPart;
import gptgrpc.v1.Gateway.ChatMessage;
import gptgrpc.v1.Gateway.ContentPart;
import gptgrpc.v1.Gateway.FilePart;
import gptgrpc.v1.Gateway.ImageDetail;
import gptgrpc.v1.Gateway.ImagePart;
import gptgrpc.v1.Gateway.Role;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.net.URLConnection;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Locale;

/**
 * Content parts in one line: a user message with an image, an audio clip or a file.
 *
 * <pre>{@code
 * ChatMessage message = Parts.userMessage(Parts.text("What is in this picture?"),
 *     Parts.image(Path.of("photo.png"), ImageDetail.IMAGE_DETAIL_LOW));
 * }</pre>
 *
 * <p>Only user messages may carry images, audio and files; the gateway checks types and sizes (10 MiB per part,
 * 12 MiB per request) before anything is sent upstream.
 */
public final class Parts {
  private Parts() {}

  /** A text part. */
  public static ContentPart text(String text) {
    return ContentPart.newBuilder().setText(text).build();
  }

  /** An image the gateway passes on by URL (https, or a data URL); it never fetches it. */
  public static ContentPart imageUrl(String url, ImageDetail detail) {
    return ContentPart.newBuilder().setImage(ImagePart.newBuilder().setUrl(url).setDetail(detail)).build();
  }

  /** An image sent inline, with its MIME type (image/png, image/jpeg, image/gif or image/webp). */
  public static ContentPart image(byte[] data, String mimeType, ImageDetail detail) {
    ImagePart image =
        ImagePart.newBuilder().setData(ByteString.copyFrom(data)).setMimeType(mimeType).setDetail(detail).build();
    return ContentPart.newBuilder().setImage(image).build();
  }

  /**
   * An image file sent inline; its type from its bytes (PNG, JPEG, GIF, WebP), else its name.
   *
   * @throws IOException when it cannot be read
   * @throws IllegalArgumentException when its type cannot be told
   */
  public static ContentPart image(Path path, ImageDetail detail) throws IOException {
    byte[] data = Files.readAllBytes(path);
    String mimeType = imageType(data);
    if (mimeType == null) {
      mimeType = URLConnection.guessContentTypeFromName(path.getFileName().toString());
    }
    if (mimeType == null || !mimeType.startsWith("image/")) {
      throw new IllegalArgumentException("gpt-grpc: cannot tell the image type of " + path + ": give it");
    }
    return image(data, mimeType, detail);
  }

  /** An audio clip sent inline (WAV or MP3). */
  public static ContentPart audio(byte[] data, AudioFormat format) {
    return ContentPart.newBuilder()
        .setAudio(AudioPart.newBuilder().setData(ByteString.copyFrom(data)).setFormat(format))
        .build();
  }

  /**
   * A .wav or .mp3 file sent inline.
   *
   * @throws IOException when it cannot be read
   * @throws IllegalArgumentException when its name is neither
   */
  public static ContentPart audio(Path path) throws IOException {
    String name = path.getFileName().toString().toLowerCase(Locale.ROOT);
    AudioFormat format;
    if (name.endsWith(".wav")) {
      format = AudioFormat.AUDIO_FORMAT_WAV;
    } else if (name.endsWith(".mp3")) {
      format = AudioFormat.AUDIO_FORMAT_MP3;
    } else {
      throw new IllegalArgumentException("gpt-grpc: " + path + " is neither .wav nor .mp3: give the format");
    }
    return audio(Files.readAllBytes(path), format);
  }

  /** A file sent inline, such as a PDF; an empty mimeType is left for the gateway to guess from the filename. */
  public static ContentPart file(byte[] data, String filename, String mimeType) {
    FilePart file =
        FilePart.newBuilder().setData(ByteString.copyFrom(data)).setFilename(filename).setMimeType(mimeType).build();
    return ContentPart.newBuilder().setFile(file).build();
  }

  /**
   * A file sent inline under its own name.
   *
   * @throws IOException when it cannot be read
   */
  public static ContentPart file(Path path) throws IOException {
    return file(Files.readAllBytes(path), path.getFileName().toString(), "");
  }

  /** A user message made of parts. */
  public static ChatMessage userMessage(ContentPart... parts) {
    return ChatMessage.newBuilder().setRole(Role.ROLE_USER).addAllParts(Arrays.asList(parts)).build();
  }

  private static String imageType(byte[] data) {
    if (data.length >= 12
        && new String(data, 0, 4, StandardCharsets.ISO_8859_1).equals("RIFF")
        && new String(data, 8, 4, StandardCharsets.ISO_8859_1).equals("WEBP")) {
      return "image/webp";
    }
    try {
      // The JDK's sniffer knows PNG, JPEG and GIF.
      String sniffed = URLConnection.guessContentTypeFromStream(new ByteArrayInputStream(data));
      return sniffed != null && sniffed.startsWith("image/") ? sniffed : null;
    } catch (IOException e) {
      return null; // a ByteArrayInputStream does not fail
    }
  }
}
