package io.gptgrpc.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import gptgrpc.v1.Gateway.AudioFormat;
import gptgrpc.v1.Gateway.ChatMessage;
import gptgrpc.v1.Gateway.ContentPart;
import gptgrpc.v1.Gateway.ImageDetail;
import gptgrpc.v1.Gateway.Role;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class PartsTest {
  private static final byte[] PNG = {
    (byte) 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'
  };

  @TempDir Path dir;

  private Path write(String name, byte[] data) throws IOException {
    return Files.write(dir.resolve(name), data);
  }

  @Test
  void imagesFromFilesBytesAndUrls() throws IOException {
    ContentPart part = Parts.image(write("photo.jpg", PNG), ImageDetail.IMAGE_DETAIL_LOW);
    assertEquals("image/png", part.getImage().getMimeType()); // the bytes' type wins over the name
    assertEquals(ImageDetail.IMAGE_DETAIL_LOW, part.getImage().getDetail());
    assertEquals(PNG.length, part.getImage().getData().size());
    byte[] webp = "RIFF\0\0\0\0WEBPVP8 ".getBytes(java.nio.charset.StandardCharsets.ISO_8859_1);
    assertEquals("image/webp", Parts.image(write("x", webp), ImageDetail.IMAGE_DETAIL_AUTO).getImage().getMimeType());
    assertEquals(
        "https://example.com/a.png",
        Parts.imageUrl("https://example.com/a.png", ImageDetail.IMAGE_DETAIL_HIGH).getImage().getUrl());
    Path odd = write("odd.bin", new byte[] {'?', '?', '?', '?'});
    assertThrows(IllegalArgumentException.class, () -> Parts.image(odd, ImageDetail.IMAGE_DETAIL_AUTO));
  }

  @Test
  void audioFilesAndMessages() throws IOException {
    ContentPart mp3 = Parts.audio(write("clip.mp3", new byte[] {(byte) 0xff, (byte) 0xfb}));
    assertEquals(AudioFormat.AUDIO_FORMAT_MP3, mp3.getAudio().getFormat());
    assertThrows(IllegalArgumentException.class, () -> Parts.audio(write("clip.ogg", new byte[] {'O'})));
    ContentPart pdf = Parts.file(write("report.pdf", "%PDF-1.7".getBytes(java.nio.charset.StandardCharsets.US_ASCII)));
    assertEquals("report.pdf", pdf.getFile().getFilename());
    ChatMessage message = Parts.userMessage(Parts.text("summarize"), pdf);
    assertEquals(Role.ROLE_USER, message.getRole());
    assertEquals(2, message.getPartsCount());
    assertEquals("summarize", message.getParts(0).getText());
  }
}
