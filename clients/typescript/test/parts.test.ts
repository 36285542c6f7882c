// Unit tests of the content-part helpers (imagePart, filePart, audioPart, userMessage).
import { create, equals } from "@bufbuild/protobuf";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";

import {
  AudioFormat,
  ChatMessageSchema,
  ContentPartSchema,
  ImageDetail,
  Role,
  audioPart,
  filePart,
  imagePart,
  textPart,
  userMessage,
} from "../src/index.js";

const dir = mkdtempSync(join(tmpdir(), "gpt-grpc-parts-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, data: Uint8Array | string): string {
  const path = join(dir, name);
  writeFileSync(path, data);
  return path;
}

const PNG = Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13]);

test("imagePart from a path, bytes or a URL", () => {
  const part = imagePart(file("photo.jpg", PNG), { detail: "low" }); // the bytes' type wins over the extension
  assert.ok(equals(ContentPartSchema, part, create(ContentPartSchema, {
    part: { case: "image", value: { data: PNG, mimeType: "image/png", detail: ImageDetail.LOW } },
  })));
  const jpeg = imagePart(Uint8Array.from([0xff, 0xd8, 0xff, 0xe0]), { detail: ImageDetail.HIGH });
  assert.equal(jpeg.part.case === "image" && jpeg.part.value.mimeType, "image/jpeg");
  const webp = imagePart(new TextEncoder().encode("RIFF\0\0\0\0WEBPVP8 "));
  assert.equal(webp.part.case === "image" && webp.part.value.mimeType, "image/webp");
  const odd = imagePart(file("odd.gif", "????")); // unknown bytes: the extension tells
  assert.equal(odd.part.case === "image" && odd.part.value.mimeType, "image/gif");
  const url = imagePart("https://example.com/a.png", { detail: "high" });
  assert.equal(url.part.case === "image" && url.part.value.url, "https://example.com/a.png");
  assert.equal(url.part.case === "image" && url.part.value.data.length, 0);
  assert.throws(() => imagePart(new TextEncoder().encode("????")), /give mimeType/);
  assert.throws(() => imagePart(join(dir, "missing.png")), /ENOENT/);
});

test("audioPart, filePart and userMessage", () => {
  const wav = audioPart(new TextEncoder().encode("RIFF\0\0\0\0WAVEfmt "));
  assert.equal(wav.part.case === "audio" && wav.part.value.format, AudioFormat.WAV);
  const mp3 = audioPart(file("clip.mp3", "\xff\xfb"));
  assert.equal(mp3.part.case === "audio" && mp3.part.value.format, AudioFormat.MP3);
  assert.throws(() => audioPart(new TextEncoder().encode("OggS")), /give format/);
  const pdf = filePart(file("report.pdf", "%PDF-1.7"));
  assert.equal(pdf.part.case === "file" && pdf.part.value.filename, "report.pdf");
  assert.throws(() => filePart(new TextEncoder().encode("%PDF")), /needs a filename/);
  const message = userMessage("summarize", pdf);
  const want = create(ChatMessageSchema, { role: Role.USER, parts: [textPart("summarize"), pdf] });
  assert.ok(equals(ChatMessageSchema, message, want));
});
