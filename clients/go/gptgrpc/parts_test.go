package gptgrpc_test

import (
	"bytes"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpc"
	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpcv1"
)

func pngBytes(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, image.NewGray(image.Rect(0, 0, 3, 2))); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func write(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestImageParts(t *testing.T) {
	low := gptgrpcv1.ImageDetail_IMAGE_DETAIL_LOW
	data := pngBytes(t)
	part, err := gptgrpc.ImageFile(write(t, "photo.jpg", data), low) // the bytes' type wins over the extension
	if err != nil {
		t.Fatal(err)
	}
	want := &gptgrpcv1.ImagePart{Data: data, MimeType: "image/png", Detail: low}
	if !proto.Equal(part.GetImage(), want) {
		t.Errorf("ImageFile = %v, want %v", part.GetImage(), want)
	}
	if got := gptgrpc.ImageBytes(data, 0).GetImage().GetMimeType(); got != "image/png" {
		t.Errorf("ImageBytes sniffed %q", got)
	}
	odd, err := gptgrpc.ImageFile(write(t, "odd.webp", []byte("????")), 0) // unknown bytes: the extension tells
	if err != nil || odd.GetImage().GetMimeType() != "image/webp" {
		t.Errorf("ImageFile(odd.webp) = %v, %v", odd, err)
	}
	if _, err := gptgrpc.ImageFile(write(t, "odd.bin", []byte("????")), 0); err == nil {
		t.Error("ImageFile of bytes of no image type: want an error")
	}
	if _, err := gptgrpc.ImageFile(filepath.Join(t.TempDir(), "missing.png"), 0); err == nil {
		t.Error("ImageFile of a missing file: want an error")
	}
	url := gptgrpc.ImageURL("https://example.com/a.png", gptgrpcv1.ImageDetail_IMAGE_DETAIL_HIGH)
	if url.GetImage().GetUrl() != "https://example.com/a.png" || len(url.GetImage().GetData()) != 0 {
		t.Errorf("ImageURL = %v", url)
	}
}

func TestAudioFileAndMessageParts(t *testing.T) {
	wav, err := gptgrpc.AudioFile(write(t, "clip", []byte("RIFF\x00\x00\x00\x00WAVEfmt ")))
	if err != nil || wav.GetAudio().GetFormat() != gptgrpcv1.AudioFormat_AUDIO_FORMAT_WAV {
		t.Errorf("AudioFile(wav bytes) = %v, %v", wav, err)
	}
	mp3, err := gptgrpc.AudioFile(write(t, "clip.mp3", []byte{0xff, 0xfb}))
	if err != nil || mp3.GetAudio().GetFormat() != gptgrpcv1.AudioFormat_AUDIO_FORMAT_MP3 {
		t.Errorf("AudioFile(clip.mp3) = %v, %v", mp3, err)
	}
	if _, err := gptgrpc.AudioFile(write(t, "clip.ogg", []byte("OggS"))); err == nil {
		t.Error("AudioFile(ogg): want an error")
	}
	doc, err := gptgrpc.FileFromPath(write(t, "report.pdf", []byte("%PDF-1.7")))
	if err != nil {
		t.Fatal(err)
	}
	msg := gptgrpc.UserMessage(gptgrpc.Text("summarize"), doc)
	want := &gptgrpcv1.ChatMessage{Role: gptgrpcv1.Role_ROLE_USER, Parts: []*gptgrpcv1.ContentPart{
		{Part: &gptgrpcv1.ContentPart_Text{Text: "summarize"}},
		{Part: &gptgrpcv1.ContentPart_File{File: &gptgrpcv1.FilePart{Data: []byte("%PDF-1.7"), Filename: "report.pdf"}}},
	}}
	if !proto.Equal(msg, want) {
		t.Errorf("UserMessage = %v, want %v", msg, want)
	}
}
