/**
 * Content parts in one line: a user message with an image, an audio clip or a file.
 *
 * ```ts
 * const message = userMessage("What is in this picture?", imagePart("photo.png", { detail: "low" }));
 * await client.chatCompletion({ model: "gpt-4o", messages: [message] });
 * ```
 *
 * A source is a path (read now) or the bytes; an image may also be an https:// or
 * data: URL, which the gateway passes on (it never fetches it). The type comes from
 * the bytes' signature (PNG, JPEG, GIF, WebP; WAV, MP3), else the file's extension.
 * Only user messages may carry images, audio and files.
 */
import { create } from "@bufbuild/protobuf";
import { readFileSync } from "node:fs";
import { basename, extname } from "node:path";

import {
  AudioFormat,
  ChatMessageSchema,
  ContentPartSchema,
  ImageDetail,
  Role,
  type ChatMessage,
  type ContentPart,
} from "./gen/gptgrpc/v1/gateway_pb.js";

/** A path to read, or the bytes themselves. */
export type MediaSource = string | Uint8Array;

/** An image's detail: the enum, or its short name. */
export type DetailLike = ImageDetail | "auto" | "low" | "high";

const DETAILS: Record<"auto" | "low" | "high", ImageDetail> = {
  auto: ImageDetail.AUTO,
  low: ImageDetail.LOW,
  high: ImageDetail.HIGH,
};
const IMAGE_EXTENSIONS: Record<string, string> = {
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
  ".gif": "image/gif",
  ".webp": "image/webp",
};
const URL_PREFIXES = ["https://", "http://", "data:"];

function startsWith(data: Uint8Array, text: string, at = 0): boolean {
  if (data.length < at + text.length) return false;
  for (let i = 0; i < text.length; i++) if (data[at + i] !== text.charCodeAt(i)) return false;
  return true;
}

/** The image type of the bytes' signature (the WHATWG MIME sniffing table's), or undefined. */
function imageType(data: Uint8Array): string | undefined {
  if (startsWith(data, "\x89PNG\r\n\x1a\n")) return "image/png";
  if (startsWith(data, "\xff\xd8\xff")) return "image/jpeg";
  if (startsWith(data, "GIF87a") || startsWith(data, "GIF89a")) return "image/gif";
  if (startsWith(data, "RIFF") && startsWith(data, "WEBP", 8)) return "image/webp";
  return undefined;
}

function read(source: MediaSource): { data: Uint8Array; name?: string } {
  if (typeof source === "string") return { data: new Uint8Array(readFileSync(source)), name: basename(source) };
  return { data: source };
}

function audioFormat(data: Uint8Array, name: string | undefined): AudioFormat {
  const extension = name ? extname(name).toLowerCase() : "";
  if (extension === ".wav" || (startsWith(data, "RIFF") && startsWith(data, "WAVE", 8))) return AudioFormat.WAV;
  if (extension === ".mp3" || startsWith(data, "ID3")) return AudioFormat.MP3;
  throw new Error("gpt-grpc: cannot tell the audio's format: give format (AudioFormat.WAV or AudioFormat.MP3)");
}

/** A text part. */
export function textPart(text: string): ContentPart {
  return create(ContentPartSchema, { part: { case: "text", value: text } });
}

/** An image: a path or bytes (sent inline), or an https:// or data: URL (passed on). */
export function imagePart(source: MediaSource, options: { detail?: DetailLike; mimeType?: string } = {}): ContentPart {
  const detail =
    typeof options.detail === "string" ? DETAILS[options.detail] : (options.detail ?? ImageDetail.UNSPECIFIED);
  if (detail === undefined) throw new Error(`gpt-grpc: unknown image detail ${String(options.detail)}`);
  if (typeof source === "string" && URL_PREFIXES.some((p) => source.startsWith(p))) {
    return create(ContentPartSchema, { part: { case: "image", value: { url: source, detail } } });
  }
  const { data, name } = read(source);
  const byName = name ? IMAGE_EXTENSIONS[extname(name).toLowerCase()] : undefined;
  const mimeType = options.mimeType ?? imageType(data) ?? byName;
  if (!mimeType) {
    throw new Error("gpt-grpc: cannot tell the image's type: give mimeType (image/png, image/jpeg, image/gif, image/webp)");
  }
  return create(ContentPartSchema, { part: { case: "image", value: { data, mimeType, detail } } });
}

/** An audio clip (WAV or MP3), from a path or bytes. */
export function audioPart(source: MediaSource, options: { format?: AudioFormat } = {}): ContentPart {
  const { data, name } = read(source);
  const format = options.format ?? audioFormat(data, name);
  return create(ContentPartSchema, { part: { case: "audio", value: { data, format } } });
}

/**
 * A file such as a PDF, from a path (its name is the filename) or bytes (give filename).
 * An unset mimeType is left for the gateway to guess from the filename's extension.
 */
export function filePart(source: MediaSource, options: { filename?: string; mimeType?: string } = {}): ContentPart {
  const { data, name } = read(source);
  const filename = options.filename ?? name;
  if (!filename) throw new Error("gpt-grpc: a file given as bytes needs a filename");
  const mimeType = options.mimeType ?? "";
  return create(ContentPartSchema, { part: { case: "file", value: { data, filename, mimeType } } });
}

/** A user message made of parts (a string is a text part). */
export function userMessage(...parts: Array<ContentPart | string>): ChatMessage {
  return create(ChatMessageSchema, {
    role: Role.USER,
    parts: parts.map((p) => (typeof p === "string" ? textPart(p) : p)),
  });
}
