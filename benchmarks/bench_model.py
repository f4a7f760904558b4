"""Training step and greedy decoding of Mu2SLAM `small` vs Speech2Text, Whisper and Moonshine at the same size.

All four models run in one process on the same random 10-second batch (log-mel with 4x subsampling for ours,
Speech2Text and Whisper; Moonshine reads the 16 kHz waveform of the same length through its own convolutions),
in fp32 and under bf16 autocast. Peers are transformers' own classes, configured to the same width and FFN
size with layer counts chosen to match our parameter count within 10%. Moonshine, like ours, takes inputs of
any length (no padding to 30 s as Whisper). A second row of ours decodes with its CTC head alone
(`generate(ctc_weight=1)`: the best path, and a prefix beam search of the same width without a language model),
the ASR decoder that fine-tuning's dev set chooses for the demo's models; it needs no decoder pass, so its times
are the encoder's plus the search. Prints figures and ratios; asserts nothing.

    python benchmarks/bench_model.py [--batch 8] [--seconds 10] [--tokens 40] [--repeats 3] [--dtypes fp32,bf16]
    python benchmarks/bench_model.py --profile     # where greedy decoding time goes: encoder vs decoder steps
    python benchmarks/bench_model.py --device cuda # the same on a GPU
    python benchmarks/bench_model.py --set frontend_stride=3 --set ctc_upsampling=2  # a variant of our preset
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from transformers import (
    MoonshineConfig,
    MoonshineForConditionalGeneration,
    Speech2TextConfig,
    Speech2TextForConditionalGeneration,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

from mu2slam_hf import Mu2SlamConfig, Mu2SlamForConditionalGeneration
from mu2slam_hf.cli.train import parse_recipe_overrides

PRESET = "configuration/models/small"


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def closest_peer(
    build: Callable[[int, int], torch.nn.Module],
    target: int,
    encoder_layers: int | None = None,
    decoder_layers: int | None = None,
) -> tuple[torch.nn.Module, int, int]:
    """The (encoder_layers, decoder_layers) whose model size is closest to `target` parameters (with the encoder
    or decoder depth fixed when given)."""
    best = None
    for enc in [encoder_layers] if encoder_layers else range(1, 16):
        for dec in [decoder_layers] if decoder_layers else range(1, 8):
            with torch.device("meta"):
                size = count(build(enc, dec))
            if best is None or abs(size - target) < abs(best[0] - target):
                best = (size, enc, dec)
    _, enc, dec = best
    return build(enc, dec), enc, dec


def speech2text(config: Mu2SlamConfig, frames: int) -> Callable[[int, int], torch.nn.Module]:
    def build(enc: int, dec: int):
        peer = Speech2TextConfig(
            vocab_size=config.vocab_size,
            d_model=config.d_model,
            encoder_layers=enc,
            decoder_layers=dec,
            encoder_attention_heads=config.encoder_attention_heads,
            decoder_attention_heads=config.decoder_attention_heads,
            encoder_ffn_dim=config.encoder_ffn_dim,
            decoder_ffn_dim=config.decoder_ffn_dim,
            max_source_positions=frames,
            max_target_positions=config.max_target_positions,
            num_conv_layers=2,
            input_feat_per_channel=config.num_mel_bins,
            dropout=0.0,
        )
        return Speech2TextForConditionalGeneration(peer)

    return build


def whisper(config: Mu2SlamConfig, frames: int) -> Callable[[int, int], torch.nn.Module]:
    def build(enc: int, dec: int):
        peer = WhisperConfig(
            vocab_size=config.vocab_size,
            num_mel_bins=config.num_mel_bins,
            d_model=config.d_model,
            encoder_layers=enc,
            decoder_layers=dec,
            encoder_attention_heads=config.encoder_attention_heads,
            decoder_attention_heads=config.decoder_attention_heads,
            encoder_ffn_dim=config.encoder_ffn_dim,
            decoder_ffn_dim=config.decoder_ffn_dim,
            max_source_positions=frames // 2,  # Whisper's conv stack halves the frames once
            max_target_positions=config.max_target_positions,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
            suppress_tokens=[],
            begin_suppress_tokens=[],
        )
        return WhisperForConditionalGeneration(peer)

    return build


def moonshine(config: Mu2SlamConfig) -> Callable[[int, int], torch.nn.Module]:
    def build(enc: int, dec: int):
        peer = MoonshineConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.d_model,
            intermediate_size=config.encoder_ffn_dim,
            encoder_num_hidden_layers=enc,
            decoder_num_hidden_layers=dec,
            encoder_num_attention_heads=config.encoder_attention_heads,
            decoder_num_attention_heads=config.decoder_attention_heads,
            max_position_embeddings=config.max_target_positions,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        )
        return MoonshineForConditionalGeneration(peer)

    return build


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(
    model, train_inputs: dict, gen_inputs: dict, labels, dtype: str, args, train_seconds: float | None = None
) -> tuple[float, float, float]:
    """(seconds per training step with Adam, per greedy decoding of `args.tokens` tokens, per beam search with
    `args.beams` beams). `gen_inputs` may hold `generate` options (`ctc_weight`); `train_seconds`: the training
    step already timed for this model (another decoding of it), not timed again."""
    device_type = next(model.parameters()).device.type
    autocast = (lambda: torch.autocast(device_type, dtype=torch.bfloat16)) if dtype == "bf16" else nullcontext
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step():
        model.train()
        with autocast():
            loss = model(**train_inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def decode(beams: int):
        model.eval()
        with torch.no_grad(), autocast():
            model.generate(**gen_inputs, max_new_tokens=args.tokens, min_new_tokens=args.tokens, num_beams=beams)

    return (
        train_seconds if train_seconds is not None else timed(train_step, args.repeats),
        timed(lambda: decode(1), args.repeats),
        timed(lambda: decode(args.beams), args.repeats),
    )


def profile_greedy(ours, s2t, features, mask, lang, args) -> None:
    """Greedy decoding split into the encoder and the token steps, ours and Speech2Text's (fp32), and the operators
    of our token steps (the encoder's outputs given to `generate`)."""
    from torch.profiler import ProfilerActivity, profile

    steps = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    with torch.no_grad():
        for name, model, encoder, inputs in (
            ("mu2slam", ours.eval(), ours.model.encoder, dict(attention_mask=mask, src_lang_ids=lang)),
            ("Speech2Text", s2t.eval(), s2t.model.encoder, dict(attention_mask=mask)),
        ):
            encode = timed(lambda: encoder(input_features=features, **inputs), args.repeats)  # noqa: B023
            whole = timed(lambda: model.generate(input_features=features, **inputs, **steps), args.repeats)  # noqa: B023
            per_token = 1000 * (whole - encode) / args.tokens
            print(
                f"{name:12} greedy {whole:.3f} s = encoder {encode:.3f} s + {args.tokens} steps ({per_token:.1f} ms each)"
            )
        encoded = ours.model.encoder(input_features=features, attention_mask=mask, src_lang_ids=lang, return_dict=True)
        inputs = dict(
            input_features=features, attention_mask=mask, src_lang_ids=lang, encoder_outputs=encoded, **steps
        )
        ours.generate(**inputs)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            ours.generate(**inputs)
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40, max_shapes_column_width=60
    )
    print(f"\nmu2slam: the operators of {args.tokens} greedy steps (encoder outputs given)\n{table}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=40, help="label length and greedy decoding length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--beams", type=int, default=5, help="beam width of the beam-search timing")
    parser.add_argument("--dtypes", default="fp32,bf16", help="bf16 is very slow on CPUs without AVX512-BF16/AMX")
    parser.add_argument("--profile", action="store_true", help="only split greedy decoding time (ours, Speech2Text)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to time every model on the GPU")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config key of our preset, value in YAML"
    )
    args = parser.parse_args()
    torch.manual_seed(0)

    preset = Mu2SlamConfig.from_pretrained(PRESET).to_dict()
    overrides = parse_recipe_overrides(args.set)
    unknown = sorted(set(overrides) - set(preset))
    if unknown:
        raise SystemExit(f"--set: {unknown} are not keys of {PRESET}/config.json")
    config = Mu2SlamConfig.from_dict({**preset, **overrides})  # built anew, so the config's own checks apply
    frames = int(args.seconds * 100)
    ours = Mu2SlamForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    # Speech2Text with one decoder layer, the cheapest decoding step at this size (the size alone picks a 3+7 split
    # for some variants of ours, whose decoding would be slow for its decoder's sake).
    s2t, s2t_enc, s2t_dec = closest_peer(speech2text(config, frames), count(ours), decoder_layers=1)
    wsp, w_enc, w_dec = closest_peer(whisper(config, frames), count(ours))
    # Moonshine's gated decoder layers are the largest: size alone would pick a 1-layer encoder; keep ours' depth.
    moon, m_enc, m_dec = closest_peer(moonshine(config), count(ours), encoder_layers=config.encoder_layers)

    features = torch.randn(args.batch, frames, config.num_mel_bins)
    mask = torch.ones(args.batch, frames, dtype=torch.long)
    labels = torch.randint(5, config.text_vocab_size, (args.batch, args.tokens))
    lang = torch.zeros(args.batch, dtype=torch.long)
    waveform = torch.randn(args.batch, int(args.seconds * 16000))
    waveform_mask = torch.ones_like(waveform, dtype=torch.long)
    models = {
        f"mu2slam small ({config.encoder_layers}+{config.decoder_layers} layers)": (
            ours,
            dict(input_features=features, attention_mask=mask, src_lang_ids=lang),
            dict(input_features=features, attention_mask=mask, src_lang_ids=lang),
        ),
        "mu2slam small, CTC head decoding": (
            ours,
            dict(input_features=features, attention_mask=mask, src_lang_ids=lang),
            dict(input_features=features, attention_mask=mask, src_lang_ids=lang, ctc_weight=1.0),
        ),
        f"Speech2Text ({s2t_enc}+{s2t_dec} layers)": (
            s2t,
            dict(input_features=features, attention_mask=mask),
            dict(input_features=features, attention_mask=mask),
        ),
        f"Whisper ({w_enc}+{w_dec} layers)": (
            wsp,
            dict(input_features=features.transpose(1, 2).contiguous()),
            dict(input_features=features.transpose(1, 2).contiguous()),
        ),
        f"Moonshine ({m_enc}+{m_dec} layers)": (
            moon,
            dict(input_values=waveform, attention_mask=waveform_mask),
            dict(input_values=waveform, attention_mask=waveform_mask),
        ),
    }

    if args.profile:
        return profile_greedy(ours, s2t, features, mask, lang, args)
    models = {name: on_device(entry, args.device) for name, entry in models.items()}
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; batch {args.batch} x {args.seconds:.0f} s")
    print(f"{'model':34} {'params':>8} {'dtype':>5} {'train step s':>13} {'greedy s':>9} {'beam s':>8}")
    results = {}
    trained = {}  # (model, dtype) -> its training step's seconds: the CTC row trains the same model as the first
    for name, (model, train_inputs, gen_inputs) in models.items():
        for dtype in args.dtypes.split(","):
            results[name, dtype] = measure(
                model, train_inputs, gen_inputs, labels.to(args.device), dtype, args, trained.get((id(model), dtype))
            )
            trained[id(model), dtype] = results[name, dtype][0]
            train_s, greedy_s, beam_s = results[name, dtype]
            print(f"{name:34} {count(model) / 1e6:7.2f}M {dtype:>5} {train_s:13.3f} {greedy_s:9.3f} {beam_s:8.3f}")

    names = list(models)
    for ours_name in names[:2]:
        print(f"\nratios against {ours_name} (peer time / mu2slam time; > 1 means mu2slam is faster)")
        for name in names[2:]:
            for dtype in args.dtypes.split(","):
                train, greedy, beam = (
                    peer / ours for peer, ours in zip(results[name, dtype], results[ours_name, dtype], strict=True)
                )
                print(f"  vs {name:32} {dtype}: train step x{train:.2f}, greedy decoding x{greedy:.2f}, "
                      f"beam search ({args.beams}) x{beam:.2f}")  # fmt: skip


def on_device(entry: tuple, device: str) -> tuple:
    """(model, training inputs, decoding inputs) on ``device``."""
    model, train_inputs, gen_inputs = entry
    move = lambda inputs: {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}  # noqa: E731
    return model.to(device), move(train_inputs), move(gen_inputs)


if __name__ == "__main__":
    main()
