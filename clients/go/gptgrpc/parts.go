package gptgrpc

import (
	"bytes"
	"fmt"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpcv1"
)

// Content parts in one line: a user message with an image or a file.
//
//	img, err := gptgrpc.ImageFile("photo.png", gptgrpcv1.ImageDetail_IMAGE_DETAIL_LOW)
//	if err != nil { ... }
//	msg := gptgrpc.UserMessage(gptgrpc.Text("What is in this picture?"), img)
//	res, err := c.ChatCompletion(ctx, &gptgrpcv1.ChatCompletionRequest{
//		Model: "gpt-4o", Messages: []*gptgrpcv1.ChatMessage{msg}})
//
// Only user messages may carry images, audio and files; the gateway checks
// types and sizes (10 MiB per part, 12 MiB per request) before anything is
// sent upstream.

// Text is a text part.
func Text(text string) *gptgrpcv1.ContentPart {
	return &gptgrpcv1.ContentPart{Part: &gptgrpcv1.ContentPart_Text{Text: text}}
}

// ImageURL is an image the gateway passes on by URL (https, or a data URL); it never fetches it.
func ImageURL(url string, detail gptgrpcv1.ImageDetail) *gptgrpcv1.ContentPart {
	return &gptgrpcv1.ContentPart{Part: &gptgrpcv1.ContentPart_Image{Image: &gptgrpcv1.ImagePart{Url: url, Detail: detail}}}
}

// ImageBytes is an image sent inline; its MIME type is sniffed from the bytes
// (net/http.DetectContentType: PNG, JPEG, GIF, WebP). For other bytes the
// type is "application/octet-stream", which the gateway refuses: use
// ImageBytesOf with the type.
func ImageBytes(data []byte, detail gptgrpcv1.ImageDetail) *gptgrpcv1.ContentPart {
	return ImageBytesOf(data, http.DetectContentType(data), detail)
}

// ImageBytesOf is an image sent inline with the given MIME type.
func ImageBytesOf(data []byte, mimeType string, detail gptgrpcv1.ImageDetail) *gptgrpcv1.ContentPart {
	return &gptgrpcv1.ContentPart{Part: &gptgrpcv1.ContentPart_Image{
		Image: &gptgrpcv1.ImagePart{Data: data, MimeType: mimeType, Detail: detail}}}
}

// ImageFile reads an image file and sends it inline (type sniffed from its
// bytes, else taken from its extension).
func ImageFile(path string, detail gptgrpcv1.ImageDetail) (*gptgrpcv1.ContentPart, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	mimeType := http.DetectContentType(data)
	if !strings.HasPrefix(mimeType, "image/") {
		mimeType = mime.TypeByExtension(strings.ToLower(filepath.Ext(path)))
	}
	if !strings.HasPrefix(mimeType, "image/") {
		return nil, fmt.Errorf("gptgrpc: cannot tell the image type of %s: use ImageBytesOf", path)
	}
	return ImageBytesOf(data, mimeType, detail), nil
}

// Audio is an audio clip sent inline (format WAV or MP3).
func Audio(data []byte, format gptgrpcv1.AudioFormat) *gptgrpcv1.ContentPart {
	return &gptgrpcv1.ContentPart{Part: &gptgrpcv1.ContentPart_Audio{Audio: &gptgrpcv1.AudioPart{Data: data, Format: format}}}
}

// AudioFile reads a .wav or .mp3 file (the format from its extension, else its bytes).
func AudioFile(path string) (*gptgrpcv1.ContentPart, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	switch ext := strings.ToLower(filepath.Ext(path)); {
	case ext == ".wav" || (len(data) >= 12 && bytes.Equal(data[:4], []byte("RIFF")) && bytes.Equal(data[8:12], []byte("WAVE"))):
		return Audio(data, gptgrpcv1.AudioFormat_AUDIO_FORMAT_WAV), nil
	case ext == ".mp3" || bytes.HasPrefix(data, []byte("ID3")):
		return Audio(data, gptgrpcv1.AudioFormat_AUDIO_FORMAT_MP3), nil
	}
	return nil, fmt.Errorf("gptgrpc: cannot tell the audio format of %s: use Audio", path)
}

// File is a file sent inline, such as a PDF; an empty mimeType is left for
// the gateway to guess from the filename's extension.
func File(data []byte, filename, mimeType string) *gptgrpcv1.ContentPart {
	return &gptgrpcv1.ContentPart{Part: &gptgrpcv1.ContentPart_File{
		File: &gptgrpcv1.FilePart{Data: data, Filename: filename, MimeType: mimeType}}}
}

// FileFromPath reads a file and sends it inline under its base name.
func FileFromPath(path string) (*gptgrpcv1.ContentPart, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return File(data, filepath.Base(path), ""), nil
}

// UserMessage is a user message made of parts.
func UserMessage(parts ...*gptgrpcv1.ContentPart) *gptgrpcv1.ChatMessage {
	return &gptgrpcv1.ChatMessage{Role: gptgrpcv1.Role_ROLE_USER, Parts: parts}
}
