"""Image token counts: OpenAI's billing formula, worked out by hand for a set of sizes and details.

Tile billing (gpt-4o 85 + 170 per tile, gpt-4o-mini 2833 + 5667, o1/o3 75 + 150,
gpt-5 70 + 140): detail low costs the base; high and auto fit the image within
2048x2048, bring its shortest side down to 768, and count 512-pixel tiles.
Patch billing (gpt-4.1-mini x1.62, gpt-4.1-nano x2.46, o4-mini x1.72): 32-pixel
patches, at most 1536. Each expected figure below shows its arithmetic.

The counts go through CountTokens (the generated stub, real PNG/JPEG/GIF/WEBP
bytes made with Pillow, read by the gateway from their headers); the pure
function `tokens.image_tokens` is checked on the same table.
"""

from __future__ import annotations

import base64
import io

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb
from PIL import Image

from gpt_grpc import tokens
from gpt_grpc.catalog import ImageBilling, default_catalog
from gpt_grpc.chat import ImagePart, TextPart
from tests.conftest import ADMIN, Gateway
from tests.helpers import details
from tests.standin import Standin

GPT_4O = ImageBilling(base=85, tile=170)
GPT_4O_MINI = ImageBilling(base=2833, tile=5667)
O1 = ImageBilling(base=75, tile=150)
GPT_41_MINI = ImageBilling(patch_multiplier=1.62)

# (model, width, height, detail, expected tokens with the arithmetic)
CASES: list[tuple[str, int, int, str | None, int]] = [
    # 1024x1024 high: fits 2048; shortest 1024 -> 768: 768x768; 2x2 = 4 tiles; 85 + 4*170 = 765.
    ("gpt-4o", 1024, 1024, "high", 85 + 4 * 170),
    # Same image, low: the base alone.
    ("gpt-4o", 1024, 1024, "low", 85),
    # 2048x4096 high: fit -> 1024x2048; shortest 1024 -> 768: 768x1536; 2x3 = 6 tiles; 85 + 6*170 = 1105.
    ("gpt-4o", 2048, 4096, "high", 85 + 6 * 170),
    # 4096x8192 low: any size at low is the base.
    ("gpt-4o", 4096, 8192, "low", 85),
    # 500x500 auto: no scaling (nothing is enlarged); 1x1 = 1 tile; 85 + 170 = 255.
    ("gpt-4o", 500, 500, "auto", 85 + 170),
    # 513x500, detail unset (the upstream's auto): 2x1 = 2 tiles; 85 + 2*170 = 425.
    ("gpt-4o", 513, 500, None, 85 + 2 * 170),
    # 800x600 high: shortest 600 <= 768, kept; ceil(800/512)=2 x ceil(600/512)=2 = 4 tiles; 765.
    ("gpt-4o", 800, 600, "high", 85 + 4 * 170),
    # 3000x1000 high: fit -> 2048x683 (1000*2048/3000 = 682.67, rounded); shortest 683 <= 768;
    # ceil(2048/512)=4 x ceil(683/512)=2 = 8 tiles; 85 + 8*170 = 1445.
    ("gpt-4o", 3000, 1000, "high", 85 + 8 * 170),
    # 2050x513: fit -> 2048x512 (513*2048/2050 = 512.4995, rounded to 512); 4x1 = 4 tiles; 765.
    ("gpt-4o", 2050, 513, "high", 85 + 4 * 170),
    # 2049x513: fit -> 2048x513 (512.75 rounds to 513); 4x2 = 8 tiles; 1445.
    ("gpt-4o", 2049, 513, "high", 85 + 8 * 170),
    # gpt-4o-mini, 1024x1024 high: 4 tiles as above; 2833 + 4*5667 = 25501.
    ("gpt-4o-mini", 1024, 1024, "high", 2833 + 4 * 5667),
    # gpt-4o-mini low: 2833.
    ("gpt-4o-mini", 64, 64, "low", 2833),
    # o1, 2048x4096 auto: 6 tiles as above; 75 + 6*150 = 975.
    ("o1", 2048, 4096, "auto", 75 + 6 * 150),
    # o1 low: 75.
    ("o1", 300, 200, "low", 75),
    # gpt-4.1-mini, 1024x1024: 32x32 = 1024 patches (under 1536); 1024*1.62 = 1658.88 -> 1659.
    ("gpt-4.1-mini", 1024, 1024, "high", 1659),
    # gpt-4.1-mini, detail does not change patch billing: 1659 again.
    ("gpt-4.1-mini", 1024, 1024, "low", 1659),
    # gpt-4.1-mini, 1800x2400: 57x75 = 4275 patches > 1536: scale r = sqrt(32*32*1536/(1800*2400)) = 0.6034;
    # 1800r/32 = 33.94, 2400r/32 = 45.25; r *= min(33/33.94, 45/45.25) -> 0.58667: 1056x1408 (floored);
    # 33x44 = 1452 patches; 1452*1.62 = 2352.24 -> 2352.
    ("gpt-4.1-mini", 1800, 2400, "auto", 2352),
]


def encoded(width: int, height: int, fmt: str = "PNG") -> bytes:
    """Real image bytes of that size (1-bit PNG/GIF: large sizes stay small and quick to make)."""
    out = io.BytesIO()
    Image.new("1" if fmt in ("PNG", "GIF") else "RGB", (width, height)).save(out, format=fmt)
    return out.getvalue()


def billing_of(model: str) -> ImageBilling:
    spec = default_catalog().lookup(model)
    assert spec is not None and spec.image_tokens is not None, model
    return spec.image_tokens


@pytest.mark.parametrize(("model", "width", "height", "detail", "expected"), CASES)
def test_the_formula(model: str, width: int, height: int, detail: str | None, expected: int) -> None:
    assert tokens.image_tokens(width, height, detail, billing_of(model)) == expected


def test_the_catalog_holds_the_published_figures() -> None:
    assert billing_of("gpt-4o") == billing_of("gpt-4o-2024-08-06") == billing_of("gpt-4.1") == GPT_4O
    assert billing_of("gpt-4o-mini") == GPT_4O_MINI
    assert billing_of("o1") == billing_of("o3") == O1
    assert billing_of("gpt-4.1-mini") == GPT_41_MINI
    assert billing_of("o4-mini").patch_multiplier == 1.72
    assert default_catalog().lookup("o3-mini").image_tokens is None  # type: ignore[union-attr]


DETAILS = {
    None: pb.IMAGE_DETAIL_UNSPECIFIED,
    "auto": pb.IMAGE_DETAIL_AUTO,
    "low": pb.IMAGE_DETAIL_LOW,
    "high": pb.IMAGE_DETAIL_HIGH,
}


async def count(gateway: Gateway, model: str, *parts: pb.ContentPart) -> pb.CountTokensResponse:
    message = pb.ChatMessage(role=pb.ROLE_USER, parts=[pb.ContentPart(text="x"), *parts])
    response: pb.CountTokensResponse = await gateway.stub.CountTokens(
        pb.CountTokensRequest(model=model, messages=[message])
    )
    return response


async def text_only(gateway: Gateway, model: str) -> int:
    message = pb.ChatMessage(role=pb.ROLE_USER, content="x")
    response = await gateway.stub.CountTokens(pb.CountTokensRequest(model=model, messages=[message]))
    return int(response.token_count)


@pytest.mark.parametrize(("model", "width", "height", "detail", "expected"), CASES)
async def test_count_tokens_counts_an_inline_image_as_billed(
    gateway: Gateway, standin: Standin, model: str, width: int, height: int, detail: str | None, expected: int
) -> None:
    part = pb.ContentPart(
        image=pb.ImagePart(data=encoded(width, height), mime_type="image/png", detail=DETAILS[detail])  # type: ignore[arg-type]
    )
    response = await count(gateway, model, part)
    # The message "x" with the image, less the message "x" alone, is the image.
    assert response.token_count - await text_only(gateway, model) == expected
    assert not response.estimated
    assert standin.request_count == 0


@pytest.mark.parametrize(("fmt", "mime_type"), [("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp")])
async def test_every_image_type_is_measured(gateway: Gateway, fmt: str, mime_type: str) -> None:
    # 1024x1024 high on gpt-4o: 765, as in the table.
    part = pb.ContentPart(
        image=pb.ImagePart(data=encoded(1024, 1024, fmt), mime_type=mime_type, detail=pb.IMAGE_DETAIL_HIGH)
    )
    response = await count(gateway, "gpt-4o", part)
    assert response.token_count - await text_only(gateway, "gpt-4o") == 85 + 4 * 170
    assert not response.estimated


async def test_an_image_by_url_counts_as_the_most_it_can_cost_and_is_estimated(gateway: Gateway) -> None:
    url = pb.ContentPart(image=pb.ImagePart(url="https://example.com/photo.jpg"))
    response = await count(gateway, "gpt-4o", url)
    # Never fetched: at auto, the most tiles an image can cover after resizing is 768x2048 -> 2x4 = 8;
    # 85 + 8*170 = 1445.
    assert response.token_count - await text_only(gateway, "gpt-4o") == 85 + 8 * 170
    assert response.estimated
    # At low its size does not matter: 85, exact.
    low = pb.ContentPart(image=pb.ImagePart(url="https://example.com/photo.jpg", detail=pb.IMAGE_DETAIL_LOW))
    response = await count(gateway, "gpt-4o", low)
    assert response.token_count - await text_only(gateway, "gpt-4o") == 85
    assert not response.estimated
    # Patch billing: the 1536-patch cap; 1536*1.62 = 2488.32 -> 2488.
    response = await count(gateway, "gpt-4.1-mini", url)
    assert response.token_count - await text_only(gateway, "gpt-4.1-mini") == 2488
    assert response.estimated


async def test_a_data_url_image_is_measured(gateway: Gateway) -> None:
    data = base64.b64encode(encoded(2048, 4096)).decode()
    part = pb.ContentPart(image=pb.ImagePart(url=f"data:image/png;base64,{data}", detail=pb.IMAGE_DETAIL_HIGH))
    response = await count(gateway, "gpt-4o", part)
    assert response.token_count - await text_only(gateway, "gpt-4o") == 85 + 6 * 170  # 1105, as in the table
    assert not response.estimated


async def test_a_model_without_figures_counts_with_gpt_4o_s_and_says_estimated(gateway: Gateway) -> None:
    part = pb.ContentPart(image=pb.ImagePart(data=encoded(1024, 1024), mime_type="image/png"))
    response = await count(gateway, "llama3.2-vision", part)
    assert response.token_count - await text_only(gateway, "llama3.2-vision") == 85 + 4 * 170
    assert response.estimated


async def test_audio_and_files_are_not_counted(gateway: Gateway) -> None:
    parts = [
        pb.ContentPart(audio=pb.AudioPart(data=b"RIFF....WAVE", format=pb.AUDIO_FORMAT_WAV)),
        pb.ContentPart(file=pb.FilePart(data=b"%PDF-1.7", filename="a.pdf")),
    ]
    response = await count(gateway, "gpt-4o", *parts)
    assert response.token_count == await text_only(gateway, "gpt-4o")
    assert not response.estimated


async def test_count_tokens_refuses_invalid_parts(gateway: Gateway) -> None:
    bad = pb.ChatMessage(
        role=pb.ROLE_SYSTEM,
        content="also content",
        parts=[pb.ContentPart(image=pb.ImagePart(data=b"not an image", mime_type="image/png"))],
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await gateway.stub.CountTokens(pb.CountTokensRequest(model="gpt-4o", messages=[bad]))
    got = details(info.value)
    assert got.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(got.fields) == {"messages[0].parts", "messages[0].parts[0]", "messages[0].parts[0].image.data"}


async def test_media_do_not_count_toward_the_count_tokens_text_cap(gateway: Gateway) -> None:
    # 5 MiB of PDF is over CountTokens' 4 MiB of text, but media have their own bounds.
    part = pb.ContentPart(file=pb.FilePart(data=b"%" * (5 * 1024 * 1024), filename="big.pdf"))
    response = await count(gateway, "gpt-4o", part)
    assert response.token_count == await text_only(gateway, "gpt-4o")


def test_library_messages_count_images_too() -> None:
    """`tokens.count_messages` takes the domain's parts and OpenAI's part objects alike."""
    png = encoded(1024, 1024)
    as_parts = [{"role": "user", "content": [TextPart("x"), ImagePart(data=png, mime_type="image/png", detail="high")]}]
    as_openai = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "x"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode(), "detail": "high"},
                },
            ],
        }
    ]
    plain = tokens.count_messages([{"role": "user", "content": "x"}], "gpt-4o").tokens
    assert tokens.count_messages(as_parts, "gpt-4o").tokens == plain + 765
    assert tokens.count_messages(as_openai, "gpt-4o").tokens == plain + 765


async def test_a_client_reservation_counts_images_as_billed(gateway: Gateway, standin: Standin) -> None:
    """A client's token limit holds an image's tokens before the call runs (store/limits' reservation)."""
    created = await gateway.stub.CreateClient(
        pb.CreateClientRequest(name="vision", limits=pb.ClientLimits(tokens_per_minute=1000)), metadata=ADMIN
    )
    token = (("authorization", f"Bearer {created.token}"),)
    text_only_call = pb.ChatCompletionRequest(model="gpt-4o", user_message="what is this?", max_tokens=10)
    assert (await gateway.stub.ChatCompletion(text_only_call, metadata=token)).content == "Echo: what is this?"
    # The same question with a 2048x4096 image at high: 85 + 6*170 = 1105 image tokens, over the 1000 a minute.
    image = pb.ContentPart(
        image=pb.ImagePart(data=encoded(2048, 4096), mime_type="image/png", detail=pb.IMAGE_DETAIL_HIGH)
    )
    message = pb.ChatMessage(role=pb.ROLE_USER, parts=[pb.ContentPart(text="what is this?"), image])
    with_image = pb.ChatCompletionRequest(model="gpt-4o", messages=[message], max_tokens=10)
    count = standin.request_count
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await gateway.stub.ChatCompletion(with_image, metadata=token)
    got = details(info.value)
    assert got.code == grpc.StatusCode.INVALID_ARGUMENT and "tokens per minute" in got.message
    assert standin.request_count == count
    # At low detail it is 85: within the limit.
    low = pb.ContentPart(
        image=pb.ImagePart(data=encoded(2048, 4096), mime_type="image/png", detail=pb.IMAGE_DETAIL_LOW)
    )
    message = pb.ChatMessage(role=pb.ROLE_USER, parts=[pb.ContentPart(text="what is this?"), low])
    response = await gateway.stub.ChatCompletion(
        pb.ChatCompletionRequest(model="gpt-4o", messages=[message], max_tokens=10), metadata=token
    )
    assert response.content == "Echo: what is this?"
