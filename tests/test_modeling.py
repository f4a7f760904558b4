"""Model core: equivalences, round trips, objectives' inputs, and clear errors on bad input."""

import logging

import pytest
import torch
from conftest import PRESETS, make_model, random_batch

import mu2slam_hf  # noqa: F401  (registers the Auto classes)
from mu2slam_hf import Mu2SlamConfig, Mu2SlamForConditionalGeneration, Mu2SlamForSequenceClassification
from mu2slam_hf.modeling_mu2slam import Mu2SlamSeq2SeqLMOutput
from mu2slam_hf.vocabulary import (
    EOS_ID,
    MASK_ID,
    NUM_SPECIAL_TOKENS,
    grow_languages,
    grow_text_vocabulary,
    replace_text_vocabulary,
)

ATOL = 1e-5


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------ presets


@pytest.mark.parametrize("name,low,high", [("tiny", 0, 1_000_000), ("small", 5_000_000, 20_000_000)])
def test_small_preset_sizes(name, low, high):
    from transformers import AutoConfig, AutoModelForSpeechSeq2Seq

    config = AutoConfig.from_pretrained(PRESETS / name)
    with torch.device("meta"):
        model = AutoModelForSpeechSeq2Seq.from_config(config)
    assert low <= count_parameters(model) <= high


@pytest.mark.parametrize("name", ["base-char", "base-spm"])
def test_base_presets_match_paper_sizes(name):
    """Paper (A.2): 24 Conformer + 6 decoder layers, d 1024, FFN 4096, 8 heads, kernel 5; encoder ~0.6B, total ~0.7B."""
    config = Mu2SlamConfig.from_pretrained(PRESETS / name)
    assert (config.encoder_layers, config.decoder_layers, config.d_model) == (24, 6, 1024)
    assert (config.encoder_ffn_dim, config.encoder_attention_heads, config.conformer_conv_kernel_size) == (4096, 8, 5)
    with torch.device("meta"):
        model = Mu2SlamForConditionalGeneration(config)
    encoder = model.model.encoder
    encoder_params = count_parameters(encoder) - encoder.embed_tokens.weight.numel()  # embedding counted once below
    total = count_parameters(model)  # tied weights are counted once by parameters()
    assert abs(encoder_params - 0.6e9) / 0.6e9 < 0.10, encoder_params
    assert abs(total - 0.7e9) / 0.7e9 < 0.10, total


def test_ctc_is_weighted_by_ctc_loss_weight_not_an_objective_weight(tiny_config):
    """Configs saved with the old, unread objective_loss_weights["ctc"] still load (the key is dropped); a recipe
    or override that sets it is told where the CTC weight lives."""
    from mu2slam_hf.configuration_mu2slam import DEFAULT_OBJECTIVE_LOSS_WEIGHTS, check_config_field

    assert "ctc" not in DEFAULT_OBJECTIVE_LOSS_WEIGHTS and "ctc" not in tiny_config.objective_loss_weights
    legacy = Mu2SlamConfig.from_dict({**tiny_config.to_dict(), "objective_loss_weights": {"ctc": 1.0, "mt": 0.5}})
    assert legacy.objective_loss_weights == {**DEFAULT_OBJECTIVE_LOSS_WEIGHTS, "mt": 0.5}
    with pytest.raises(ValueError, match="ctc_loss_weight"):
        check_config_field("objective_loss_weights", {"ctc": 0.5})


# ------------------------------------------------------------------------------------- equivalences


@pytest.fixture(params=["absolute", "rotary", "rotary, half-rate layer"])
def positions_config(request, tiny_config):
    """The tiny config with each kind of encoder positions (and its second layer at half the speech rate)."""
    tiny_config.encoder_positions = request.param.split(",")[0]
    if "half-rate" in request.param:
        tiny_config.encoder_half_rate_layers = [1, 2]
    return tiny_config


def test_half_rate_layers_see_half_the_speech_frames(tiny_config, tmp_path):
    """`encoder_half_rate_layers`: the middle layers get ceil(S/2) speech frames, text keeps its positions, the
    output is back at the front end's rate; the setting survives a save/load round trip; bad spans are refused."""
    config = Mu2SlamConfig.from_dict({**tiny_config.to_dict(), "encoder_layers": 3})
    config.encoder_half_rate_layers = [1, 3]
    model = make_model(config)
    features, mask = random_batch(config, lengths=(121, 90))
    ids = torch.randint(NUM_SPECIAL_TOKENS, config.text_vocab_size, (2, 7))
    encoded = model.get_encoder()(
        input_features=features, attention_mask=mask, input_ids=ids, src_lang_ids=torch.tensor([0, 1]),
        output_hidden_states=True,
    )  # fmt: skip
    speech = config.speech_output_lengths(121)
    assert encoded.speech_length == speech and encoded.last_hidden_state.shape[1] == speech + 7
    # the embeddings, the input of each later layer (layer 2's at half rate), the output (back at full rate)
    lengths = [states.shape[1] for states in encoded.hidden_states]
    assert lengths == [speech + 7, speech + 7, (speech + 1) // 2 + 7, speech + 7]

    model.save_pretrained(tmp_path)
    loaded = Mu2SlamForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.encoder_half_rate_layers == [1, 3]
    again = loaded.get_encoder()(input_features=features, attention_mask=mask, input_ids=ids,
                                 src_lang_ids=torch.tensor([0, 1]))  # fmt: skip
    torch.testing.assert_close(again.last_hidden_state, encoded.last_hidden_state)
    for span in ([2, 1], [2, 2], [1, 4], [1], "1-2", [-1, 2]):
        with pytest.raises(ValueError, match="encoder_half_rate_layers"):
            Mu2SlamConfig(encoder_layers=3, encoder_half_rate_layers=span)


def test_half_rate_layers_start_as_a_smoothing_of_the_frames(tiny_config):
    """At initialisation the halving is a (1/4, 1/2, 1/4) filter with an identity projection: the half-rate layers
    see the residual stream at its own scale, not shrunk by a random projection."""
    from mu2slam_hf.modeling_mu2slam import Mu2SlamTimeReduction

    config = Mu2SlamConfig.from_dict({**tiny_config.to_dict(), "encoder_half_rate_layers": [1, 2]})
    reduction = make_model(config).get_encoder().time_reduction
    states = torch.randn(1, 9, config.d_model)
    reduced, mask, frames = reduction.reduce(states, torch.ones(1, 9, dtype=torch.long), 9)
    assert frames == 5 and mask.tolist() == [[1] * 5]
    torch.testing.assert_close(reduced[0, 2], 0.25 * states[0, 3] + 0.5 * states[0, 4] + 0.25 * states[0, 5])
    restored = reduction.restore(reduced, states, 9)
    torch.testing.assert_close(restored[0, 5], reduced[0, 2] + states[0, 5])
    assert Mu2SlamTimeReduction.upsample(states, 9, 9) is states


def test_rotary_scores_depend_on_relative_positions_only():
    from mu2slam_hf.modeling_mu2slam import apply_rotary, rotary_angles

    query, key = torch.randn(1, 1, 1, 8).expand(1, 1, 40, 8), torch.randn(1, 1, 1, 8).expand(1, 1, 40, 8)
    rotary = rotary_angles(torch.arange(40), 8)
    scores = apply_rotary(query, rotary) @ apply_rotary(key, rotary).transpose(-1, -2)  # (1, 1, 40, 40)
    torch.testing.assert_close(scores[0, 0, 3, 1], scores[0, 0, 30, 28])
    torch.testing.assert_close(scores[0, 0, 1, 3], scores[0, 0, 28, 30])
    assert not torch.isclose(scores[0, 0, 3, 1], scores[0, 0, 3, 2])
    with pytest.raises(ValueError, match="encoder_positions must be one of"):
        Mu2SlamConfig(encoder_positions="relative")


def test_eager_and_sdpa_agree(positions_config):
    tiny_config = positions_config
    eager, sdpa = make_model(tiny_config, "eager"), make_model(tiny_config, "sdpa")
    sdpa.load_state_dict(eager.state_dict())
    features, mask = random_batch(tiny_config)
    labels = torch.randint(NUM_SPECIAL_TOKENS, tiny_config.text_vocab_size, (2, 9))
    kwargs = dict(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([0, 3]), labels=labels)
    out_eager, out_sdpa = eager(**kwargs), sdpa(**kwargs)
    torch.testing.assert_close(out_eager.logits, out_sdpa.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        out_eager.encoder_last_hidden_state, out_sdpa.encoder_last_hidden_state, atol=ATOL, rtol=0
    )


def test_eager_attention_with_sdpas_masks_is_sdpa():
    """The CPU low-precision training path computes what transformers' SDPA attention computes, with SDPA's masks:
    boolean padding masks, and causal attention where a causal module's mask was left out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from mu2slam_hf.modeling_mu2slam import eager_attention_forward

    torch.manual_seed(0)
    query, key, value = (torch.randn(3, 2, 7, 8) for _ in range(3))
    padding = (torch.arange(7)[None] < torch.tensor([7, 4, 6])[:, None])[:, None, None, :].expand(3, 1, 7, 7)
    for causal, mask in [(False, padding), (True, None), (True, padding & torch.ones(7, 7, dtype=torch.bool).tril())]:
        module = torch.nn.Module()
        module.is_causal, module.training = causal, False
        ours, _ = eager_attention_forward(module, query, key, value, mask, scaling=8**-0.5)
        reference, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=8**-0.5)
        torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_bf16_training_on_a_cpu_gives_eagers_loss_and_gradients_with_sdpa(positions_config):
    """Under bf16 autocast with gradients, SDPA's CPU flash kernel is replaced by matrix products (its backward is
    3-4x slower there): the sdpa model then gives the eager model's loss and gradients; without gradients it keeps
    SDPA's own kernel."""
    from mu2slam_hf.modeling_mu2slam import attention_function, eager_attention_forward

    query = torch.randn(2, 4, 5, 8, dtype=torch.bfloat16, requires_grad=True)
    assert attention_function("sdpa", query) is eager_attention_forward
    assert attention_function("sdpa", query.detach()) is not eager_attention_forward
    assert attention_function("sdpa", query.float()) is not eager_attention_forward
    eager, sdpa = make_model(positions_config, "eager"), make_model(positions_config, "sdpa")
    sdpa.load_state_dict(eager.state_dict())
    features, mask = random_batch(positions_config)
    labels = torch.randint(NUM_SPECIAL_TOKENS, positions_config.text_vocab_size, (2, 9))
    kwargs = dict(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([0, 3]), labels=labels)
    losses = []
    for model in (eager, sdpa):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**kwargs).loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=0)
    for (name, a), b in zip(eager.named_parameters(), sdpa.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-3, msg=name)


def test_cached_and_uncached_greedy_decoding_identical(tiny_config):
    model = make_model(tiny_config)
    features, mask = random_batch(tiny_config)
    kwargs = dict(input_features=features, attention_mask=mask, src_lang="fr", tgt_lang="en")
    kwargs.update(max_new_tokens=12, min_new_tokens=12, do_sample=False)
    cached = model.generate(**kwargs, use_cache=True)
    uncached = model.generate(**kwargs, use_cache=False)
    assert cached.shape == (2, 13)
    assert torch.equal(cached, uncached)


def test_beam_search_leaves_the_cross_attention_cache_in_place(tiny_config):
    """Beam search with our cache (cross-attention keys/values never reordered: a beam only replaces a beam of the
    same utterance, whose are the same) finds what it finds with transformers' cache, which reorders both."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    from mu2slam_hf.modeling_mu2slam import Mu2SlamEncoderDecoderCache

    tiny_config.init_std = 0.3  # weights large enough that beams swap: without any reordering the output differs
    model = make_model(tiny_config)
    features, mask = random_batch(tiny_config, lengths=(120, 87, 101))
    kwargs = dict(input_features=features, attention_mask=mask, src_lang="fr", tgt_lang="en", max_new_tokens=8)
    ours = model.generate(**kwargs, num_beams=4, num_return_sequences=2, return_dict_in_generate=True)
    assert type(ours.past_key_values) is Mu2SlamEncoderDecoderCache
    reference_cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    reference = model.generate(**kwargs, num_beams=4, num_return_sequences=2, past_key_values=reference_cache)
    assert torch.equal(ours.sequences, reference)


def test_generate_leaves_the_callers_encoder_outputs_as_they_were(tiny_config):
    """Beam search expands the encoder outputs for its beams; a caller's precomputed ones are not touched, so they
    can be decoded again (transformers' own expansion works in place)."""
    model = make_model(tiny_config)
    features, mask = random_batch(tiny_config)
    lang = torch.tensor([0, 1])
    encoded = model.get_encoder()(input_features=features, attention_mask=mask, src_lang_ids=lang)
    kwargs = dict(input_features=features, attention_mask=mask, src_lang_ids=lang, num_beams=3, max_new_tokens=5)
    first = model.generate(**kwargs, encoder_outputs=encoded)
    assert encoded.last_hidden_state.shape[0] == 2
    assert torch.equal(model.generate(**kwargs, encoder_outputs=encoded), first)
    assert torch.equal(model.generate(**kwargs), first)


def test_padding_changes_nothing_on_real_frames(positions_config):
    """One utterance alone vs padded in a batch with a longer one: same encoder output and same text."""
    tiny_config = positions_config
    model = make_model(tiny_config)
    features, mask = random_batch(tiny_config, lengths=(141, 60))
    alone_features = features[1:, :60]
    lang = dict(src_lang="de", tgt_lang="de")

    encoder = model.get_encoder()
    batched = encoder(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([1, 1]))
    alone = encoder(input_features=alone_features, src_lang_ids=torch.tensor([1]))
    real = int(alone.attention_mask.sum())
    assert real == tiny_config.speech_output_lengths(60)
    assert batched.attention_mask[1].sum() == real
    torch.testing.assert_close(batched.last_hidden_state[1, :real], alone.last_hidden_state[0], atol=ATOL, rtol=0)

    generate = dict(max_new_tokens=10, min_new_tokens=10, **lang)
    batched_ids = model.generate(input_features=features, attention_mask=mask, **generate)
    alone_ids = model.generate(input_features=alone_features, **generate)
    assert torch.equal(batched_ids[1], alone_ids[0])


def test_mixed_length_batches_are_encoded_in_length_groups(positions_config):
    """A speech batch of short and long clips (a fine-tuning step that draws ASR and AST batches of different
    lengths) is encoded in groups of similar length: the loss, the logits on real positions and the gradients are
    those of one padded pass (which `output_hidden_states=True` still takes)."""
    config = positions_config
    model = make_model(config).train()
    config.encoder_dropout = config.decoder_dropout = config.attention_dropout = config.activation_dropout = 0.0
    model.config.apply_spec_augment = False
    features, mask = random_batch(config, lengths=(300, 40, 290, 45))
    labels = torch.randint(NUM_SPECIAL_TOKENS, config.text_vocab_size, (4, 7))
    kwargs = dict(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([0, 1, 2, 3]), labels=labels,
                  ctc_labels=labels)  # fmt: skip
    grouped = model(**kwargs)
    grouped.loss.backward()
    grouped_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    padded = model(**kwargs, output_hidden_states=True)
    padded.loss.backward()
    torch.testing.assert_close(grouped.loss, padded.loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(grouped.logits, padded.logits, atol=ATOL, rtol=0)
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(grouped_grads[name], parameter.grad, atol=1e-4, rtol=1e-3, msg=name)
    encoded = model.get_encoder()(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([0] * 4))
    short = int(config.speech_output_lengths(40))
    assert encoded.last_hidden_state.shape[1] == int(config.speech_output_lengths(300))
    assert encoded.attention_mask[1].sum() == short


def test_length_groups_under_bf16_autocast(tiny_config):
    """Mixed-length speech encoded in length groups under bf16 autocast, from float32 or bf16 features, gives
    the padded pass's real positions to bf16 precision."""
    model = make_model(tiny_config)
    features, mask = random_batch(tiny_config, lengths=(300, 40, 290, 45))
    lang = torch.zeros(4, dtype=torch.long)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        padded = model.get_encoder()(input_features=features, attention_mask=mask, src_lang_ids=lang,
                                     output_hidden_states=True)  # fmt: skip
        for dtype in (torch.float32, torch.bfloat16):
            grouped = model.get_encoder()(input_features=features.to(dtype), attention_mask=mask, src_lang_ids=lang)
            real = grouped.attention_mask.bool()
            torch.testing.assert_close(
                grouped.last_hidden_state[real].float(), padded.last_hidden_state[real].float(), atol=0.1, rtol=0.05
            )


def test_speech_and_text_segments_are_masked_per_segment(positions_config):
    """[speech; text] input: the padding of either segment never changes the other example's outputs."""
    tiny_config = positions_config
    model = make_model(tiny_config)
    encoder = model.get_encoder()
    features, mask = random_batch(tiny_config, lengths=(100, 64))
    text = torch.randint(NUM_SPECIAL_TOKENS, tiny_config.text_vocab_size, (2, 11))
    text_mask = torch.ones_like(text)
    text_mask[1, 7:] = 0
    src, tgt = torch.tensor([2, 2]), torch.tensor([0, 0])
    joint = encoder(
        input_features=features,
        attention_mask=mask,
        input_ids=text,
        text_attention_mask=text_mask,
        src_lang_ids=src,
        text_lang_ids=tgt,
    )
    speech_len = joint.speech_length
    alone = encoder(
        input_features=features[1:, :64], input_ids=text[1:, :7], src_lang_ids=src[:1], text_lang_ids=tgt[:1]
    )
    real_speech = tiny_config.speech_output_lengths(64)
    assert alone.speech_length == real_speech
    assert joint.attention_mask.shape == (2, speech_len + 11)
    assert joint.attention_mask[1].sum() == real_speech + 7
    torch.testing.assert_close(
        joint.last_hidden_state[1, :real_speech], alone.last_hidden_state[0, :real_speech], atol=ATOL, rtol=0
    )
    torch.testing.assert_close(
        joint.last_hidden_state[1, speech_len : speech_len + 7],
        alone.last_hidden_state[0, real_speech:],
        atol=ATOL,
        rtol=0,
    )


def test_speech_mask_embedding_replaces_frames(tiny_config):
    model = make_model(tiny_config)
    encoder = model.get_encoder()
    features, mask = random_batch(tiny_config, lengths=(80, 80))
    frames = tiny_config.speech_output_lengths(80)
    speech_mask = torch.zeros(2, frames, dtype=torch.bool)
    speech_mask[:, 3:9] = True
    lang = torch.tensor([0, 0])
    embedded, _ = encoder.embed_speech(features, mask, lang, speech_mask)
    plain, _ = encoder.embed_speech(features, mask, lang)
    mask_embedding = encoder.embed_tokens(torch.tensor([MASK_ID]))[0]
    # masked frames: [MASK] embedding + the same position/language/modality terms as the plain frames
    torch.testing.assert_close(
        embedded[:, 3:9] - mask_embedding, plain[:, 3:9] - encoder.speech_frontend(features)[:, 3:9], atol=ATOL, rtol=0
    )
    torch.testing.assert_close(embedded[:, 9:], plain[:, 9:])
    # a speech frame fully replaced by [MASK] tells the encoder nothing about the original frame
    features_changed = features.clone()
    features_changed[:, 4 * 3 + 6 : 4 * 8] += 5.0  # only inputs seen by masked frames 4..7
    changed, _ = encoder.embed_speech(features_changed, mask, lang, speech_mask)
    torch.testing.assert_close(changed[:, 4:8], embedded[:, 4:8])


# ------------------------------------------------------------------------------------------ losses


def test_losses_count_only_labelled_positions(tiny_config):
    model = make_model(tiny_config)
    features, mask = random_batch(tiny_config, lengths=(100, 100))
    frames = tiny_config.speech_output_lengths(100)
    codes = torch.randint(0, tiny_config.codebook_size, (2, frames)) + tiny_config.vocabulary.speech_code_offset
    mlm_labels = torch.full((2, frames), -100)
    mlm_labels[:, 5:15] = codes[:, 5:15]
    transcript = torch.randint(NUM_SPECIAL_TOKENS, tiny_config.text_vocab_size, (2, 6))
    ctc_labels = transcript.clone()
    ctc_labels[1] = -100  # a row without CTC targets (e.g. an AST example in a mixed batch)
    out = model(
        input_features=features,
        attention_mask=mask,
        src_lang_ids=torch.tensor([0, 1]),
        labels=transcript,
        mlm_labels=mlm_labels,
        ctc_labels=ctc_labels,
        speech_mlm_mask=mlm_labels != -100,
    )
    c = tiny_config
    expected = c.decoder_loss_weight * out.decoder_loss + c.mlm_loss_weight * out.mlm_loss
    torch.testing.assert_close(out.loss, expected + c.ctc_loss_weight * out.ctc_loss)
    # the MLM loss is the cross-entropy at the labelled positions only
    states = out.encoder_last_hidden_state[:, 5:15]
    manual = torch.nn.functional.cross_entropy(model.mlm_head(states).flatten(0, 1), codes[:, 5:15].flatten())
    torch.testing.assert_close(out.mlm_loss, manual)
    # CTC on row 0 alone equals CTC on the batch whose row 1 has no targets
    alone = model(
        input_features=features[:1],
        src_lang_ids=torch.tensor([0]),
        labels=transcript[:1],
        ctc_labels=ctc_labels[:1],
        speech_mlm_mask=mlm_labels[:1] != -100,
    )
    torch.testing.assert_close(out.ctc_loss, alone.ctc_loss, atol=ATOL, rtol=0)


def test_ctc_loss_is_the_mean_over_rows_with_targets_of_torch_ctc(tiny_config):
    """The CTC loss, computed on every row with masks (no host reads), equals torch's mean CTC over only the rows
    that have targets, with IGNORE_INDEX wherever it sits in a row."""
    from torch.nn import functional as F

    model = make_model(tiny_config).eval()
    states = torch.randn(4, 12, tiny_config.d_model)
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[1, 9:] = mask[3, 5:] = 0
    labels = torch.randint(NUM_SPECIAL_TOKENS, tiny_config.text_vocab_size, (4, 5))
    labels[1, 3:] = -100  # right padding
    labels[2] = -100  # no transcript: not counted
    labels[3, 1] = -100  # a gap inside the row
    loss = model._ctc_loss(states, mask, labels)

    rows = torch.tensor([0, 1, 3])
    log_probs = F.log_softmax(model.ctc_head(states[rows], model.model.shared.weight).float(), -1).transpose(0, 1)
    kept = labels[rows]
    reference = F.ctc_loss(log_probs, kept[kept != -100], model.ctc_head.slot_lengths(mask[rows].sum(-1)),
                           (kept != -100).sum(-1), blank=tiny_config.pad_token_id, zero_infinity=True)  # fmt: skip
    torch.testing.assert_close(loss, reference)
    nothing = model._ctc_loss(states, mask, torch.full_like(labels, -100))
    assert nothing.item() == 0.0 and nothing.requires_grad == loss.requires_grad


def test_intermediate_ctc_mixes_a_lower_layer_into_the_ctc_loss(tiny_config):
    """InterCTC: (1 - w) CTC(last layer) + w CTC(LayerNorm(layer k)) with the same head; states not returned."""
    features, mask = random_batch(tiny_config, lengths=(100, 80))
    transcript = torch.randint(NUM_SPECIAL_TOKENS, tiny_config.text_vocab_size, (2, 6))
    kwargs = dict(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([0, 1]), labels=transcript)
    plain = make_model(tiny_config)
    inter_config = Mu2SlamConfig.from_dict({**tiny_config.to_dict(), "intermediate_ctc_layer": 1})
    inter_config.intermediate_ctc_weight = 0.25
    inter = make_model(inter_config)
    inter.load_state_dict(plain.state_dict())
    out, reference = inter(**kwargs, ctc_labels=transcript), plain(**kwargs, ctc_labels=transcript)
    assert out.encoder_hidden_states is None and out.decoder_hidden_states is None
    states = plain.get_encoder()(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([0, 1]),
                                 output_hidden_states=True)  # fmt: skip
    lower = plain.model.encoder.layer_norm(states.hidden_states[1])
    lower_ctc = plain._ctc_loss(lower, states.attention_mask, transcript)
    torch.testing.assert_close(out.ctc_loss, 0.75 * reference.ctc_loss + 0.25 * lower_ctc)
    torch.testing.assert_close(out.decoder_loss, reference.decoder_loss)
    with pytest.raises(ValueError, match="intermediate_ctc_layer must be below encoder_layers"):
        Mu2SlamConfig(encoder_layers=2, intermediate_ctc_layer=2)


def test_intermediate_ctc_reads_a_half_rate_layer_at_the_full_rate(tiny_config):
    """InterCTC on a layer of `encoder_half_rate_layers`: its states are repeated back to the CTC head's rate."""
    from mu2slam_hf.modeling_mu2slam import Mu2SlamTimeReduction

    config = Mu2SlamConfig.from_dict({**tiny_config.to_dict(), "encoder_layers": 3})
    config.encoder_half_rate_layers = [1, 3]
    config.intermediate_ctc_layer, config.intermediate_ctc_weight = 2, 0.5
    model = make_model(config)
    features, mask = random_batch(config, lengths=(100, 81))
    transcript = torch.randint(NUM_SPECIAL_TOKENS, config.text_vocab_size, (2, 6))
    lang = torch.tensor([0, 1])
    out = model(input_features=features, attention_mask=mask, src_lang_ids=lang, labels=transcript,
                ctc_labels=transcript)  # fmt: skip
    states = model.get_encoder()(input_features=features, attention_mask=mask, src_lang_ids=lang,
                                 output_hidden_states=True)  # fmt: skip
    frames = states.last_hidden_state.shape[1]
    middle = Mu2SlamTimeReduction.upsample(states.hidden_states[2], frames, frames)
    last_ctc = model._ctc_loss(states.last_hidden_state, states.attention_mask, transcript)
    middle_ctc = model._ctc_loss(model.model.encoder.layer_norm(middle), states.attention_mask, transcript)
    torch.testing.assert_close(out.ctc_loss, 0.5 * last_ctc + 0.5 * middle_ctc)


def test_example_weights_scale_losses(tiny_config):
    model = make_model(tiny_config)
    features, mask = random_batch(tiny_config, lengths=(90, 90))
    labels = torch.randint(NUM_SPECIAL_TOKENS, tiny_config.text_vocab_size, (2, 5))
    kwargs = dict(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([0, 0]), labels=labels)
    plain = model(**kwargs).decoder_loss
    weighted = model(**kwargs, example_weights=torch.tensor([0.1, 0.1])).decoder_loss
    torch.testing.assert_close(weighted, 0.1 * plain)


def test_tiny_model_overfits_and_decodes_the_texts(tiny_config):
    """A handful of (features, text) pairs: loss below 0.1 and greedy decoding returns the texts."""
    torch.manual_seed(0)
    model = make_model(tiny_config).train()
    features, mask = random_batch(tiny_config, lengths=(90, 70, 110, 64), seed=1)
    texts = [[10, 11, 12, 13], [20, 21, 22], [30, 31, 32, 33, 34], [40, 41]]
    labels = torch.full((4, 6), -100)
    for row, text in enumerate(texts):
        labels[row, : len(text) + 1] = torch.tensor(text + [tiny_config.eos_token_id])
    lang = torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model(input_features=features, attention_mask=mask, src_lang_ids=lang, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.02:
            break
    assert loss.item() < 0.1
    model.eval()
    generated = model.generate(input_features=features, attention_mask=mask, src_lang_ids=lang, max_new_tokens=8)
    for row, text in enumerate(texts):
        tokens = generated[row, 1:].tolist()
        assert tokens[: tokens.index(tiny_config.eos_token_id)] == text


# ------------------------------------------------------------------------------------- generation


def test_generation_stays_in_the_target_modality(tiny_config):
    model = make_model(tiny_config)
    features, mask = random_batch(tiny_config)
    vocab = tiny_config.vocabulary
    kwargs = dict(input_features=features, attention_mask=mask, src_lang="en", max_new_tokens=20, min_new_tokens=20)
    text = model.generate(**kwargs, do_sample=True, top_k=0)[:, 1:]
    speech = model.generate(**kwargs, tgt_modality="speech", do_sample=True, top_k=0)[:, 1:]
    in_text = (text >= NUM_SPECIAL_TOKENS) & (text < vocab.speech_code_offset)
    assert bool(in_text.all())
    assert bool((speech >= vocab.speech_code_offset).all())


def test_outputs_cut_by_the_default_length_limit_are_reported(tiny_config, caplog):
    model = make_model(tiny_config)
    model.generation_config.max_new_tokens = 5
    features, mask = random_batch(tiny_config)
    never_ending = dict(input_features=features, attention_mask=mask, src_lang="en", tgt_lang="de",
                        suppress_tokens=[tiny_config.eos_token_id])  # fmt: skip
    with caplog.at_level(logging.WARNING):
        ids = model.generate(**never_ending)
    assert ids.shape[1] == 6
    assert "2 of 2 outputs reached the 5-token limit" in caplog.text and "chunk_length_s" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model.generate(**never_ending, max_new_tokens=5)  # a limit the caller chose is no surprise
    assert "token limit" not in caplog.text


def test_text_input_translation_and_beam_search(tiny_config):
    model = make_model(tiny_config)
    ids = torch.randint(NUM_SPECIAL_TOKENS, tiny_config.text_vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    greedy = model.generate(input_ids=ids, attention_mask=mask, src_lang="de", tgt_lang="en", max_new_tokens=6)
    beams = model.generate(
        input_ids=ids, attention_mask=mask, src_lang="de", tgt_lang="en", max_new_tokens=6, num_beams=3
    )
    assert greedy.shape[0] == beams.shape[0] == 2


# ------------------------------------------------------------------------- transformers output conventions


def _speech_and_labels(config):
    features, mask = random_batch(config)
    labels = torch.randint(NUM_SPECIAL_TOKENS, config.text_vocab_size, (2, 7))
    return dict(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([0, 3]), labels=labels)


def test_return_dict_false_gives_the_fields_as_a_tuple(tiny_config):
    model = make_model(tiny_config)
    kwargs = _speech_and_labels(tiny_config)
    out = model(**kwargs)
    as_tuple = model(**kwargs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    fields = [value for value in out.values()]  # to_tuple() order: the fields that are not None
    assert len(as_tuple) == len(fields)
    assert torch.equal(as_tuple[0], out.loss) and torch.equal(as_tuple[1], out.logits)
    for got, expected in zip(as_tuple, fields, strict=True):
        if isinstance(expected, torch.Tensor):
            assert torch.equal(got, expected)
    assert torch.equal(as_tuple[list(out.keys()).index("row_losses")], out.row_losses)

    encoder = model.get_encoder()
    encoder_kwargs = dict(input_features=kwargs["input_features"], attention_mask=kwargs["attention_mask"])
    encoded = encoder(**encoder_kwargs, src_lang_ids=kwargs["src_lang_ids"])
    encoded_tuple = encoder(**encoder_kwargs, src_lang_ids=kwargs["src_lang_ids"], return_dict=False)
    assert torch.equal(encoded_tuple[0], encoded.last_hidden_state)
    assert torch.equal(encoded_tuple[1], encoded.attention_mask)
    assert encoded_tuple[2] == encoded.speech_length

    model.config.return_dict = False  # the default comes from the config, as in transformers' models
    assert isinstance(model(**kwargs), tuple)
    assert isinstance(model(**kwargs, return_dict=True), Mu2SlamSeq2SeqLMOutput)


def test_hidden_states_and_attentions_are_recorded(tiny_config):
    model = make_model(tiny_config, "eager")
    kwargs = _speech_and_labels(tiny_config)
    with torch.no_grad():
        plain = model(**kwargs)
        out = model(**kwargs, output_hidden_states=True, output_attentions=True)
    assert plain.encoder_hidden_states is None and plain.decoder_attentions is None and plain.cross_attentions is None
    torch.testing.assert_close(out.logits, plain.logits)
    c = tiny_config
    batch, positions = out.encoder_last_hidden_state.shape[:2]
    steps = kwargs["labels"].shape[1]
    assert len(out.encoder_hidden_states) == c.encoder_layers + 1  # the embeddings, then every layer
    assert all(h.shape == (batch, positions, c.d_model) for h in out.encoder_hidden_states)
    assert torch.equal(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)  # after the final LayerNorm
    assert len(out.encoder_attentions) == c.encoder_layers
    assert all(a.shape == (batch, c.encoder_attention_heads, positions, positions) for a in out.encoder_attentions)
    assert len(out.decoder_hidden_states) == c.decoder_layers + 1
    assert all(h.shape == (batch, steps, c.d_model) for h in out.decoder_hidden_states)
    assert len(out.decoder_attentions) == len(out.cross_attentions) == c.decoder_layers
    assert all(a.shape == (batch, c.decoder_attention_heads, steps, steps) for a in out.decoder_attentions)
    assert all(a.shape == (batch, c.decoder_attention_heads, steps, positions) for a in out.cross_attentions)
    # weights are probabilities: rows sum to 1, padding and future positions get none
    torch.testing.assert_close(out.cross_attentions[0].sum(-1), torch.ones(batch, c.decoder_attention_heads, steps))
    real = int(out.encoder_attention_mask[1].sum())
    assert float(out.encoder_attentions[0][1, :, :, real:].abs().max()) == 0.0
    assert float(out.decoder_attentions[0][..., 0, 1:].abs().max()) == 0.0

    generated = model.generate(
        input_features=kwargs["input_features"],
        attention_mask=kwargs["attention_mask"],
        src_lang="en",
        max_new_tokens=3,
        min_new_tokens=3,
        output_attentions=True,
        return_dict_in_generate=True,
    )
    assert len(generated.encoder_attentions) == c.encoder_layers
    assert len(generated.cross_attentions) == 3 and len(generated.cross_attentions[0]) == c.decoder_layers

    classifier = Mu2SlamForSequenceClassification._from_config(c, attn_implementation="eager").eval()
    ids = torch.randint(NUM_SPECIAL_TOKENS, c.text_vocab_size, (2, 5))
    classified = classifier(input_ids=ids, src_lang_ids=torch.tensor([0, 0]), output_hidden_states=True)
    assert len(classified.hidden_states) == c.encoder_layers + 1 and classified.attentions is None


def test_unknown_forward_keywords_are_errors(tiny_config):
    """transformers' shared keyword arguments are accepted; anything else (a typo) is a TypeError, not ignored."""
    model = make_model(tiny_config)
    kwargs = _speech_and_labels(tiny_config)
    labels = kwargs.pop("labels")
    with pytest.raises(TypeError, match="Mu2SlamForConditionalGeneration.*'label'"):
        model(**kwargs, label=labels)
    with pytest.raises(TypeError, match="Mu2SlamEncoder.*'src_lang'"):
        model.get_encoder()(input_features=kwargs["input_features"], src_lang="en")
    with pytest.raises(TypeError, match="Mu2SlamModel.*'foo'"):
        model.model(**kwargs, decoder_input_ids=labels, foo=1)
    with pytest.raises(TypeError, match="Mu2SlamForSequenceClassification.*'labelz'"):
        Mu2SlamForSequenceClassification(tiny_config)(input_ids=labels, src_lang_ids=torch.tensor([0, 0]), labelz=1)
    out = model(**kwargs, labels=labels, num_items_in_batch=torch.tensor(14))  # as Seq2SeqTrainer may pass it
    assert torch.equal(out.loss, model(**kwargs, labels=labels).loss)


# ----------------------------------------------------------------------------------- save / load


def test_save_load_round_trip_is_bit_exact_and_pickle_free(tiny_config, tmp_path):
    from transformers import AutoModelForSpeechSeq2Seq

    model = make_model(tiny_config)
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert {"modeling_mu2slam.py", "configuration_mu2slam.py", "vocabulary.py"} <= set(files)
    loaded = AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path).eval()
    assert type(loaded) is Mu2SlamForConditionalGeneration
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    for key in original:
        assert torch.equal(original[key], reloaded[key]), key
    assert loaded.lm_head.weight.data_ptr() == loaded.model.shared.weight.data_ptr()  # still tied
    features, mask = random_batch(tiny_config)
    kwargs = dict(input_features=features, attention_mask=mask, src_lang="en", max_new_tokens=6)
    assert torch.equal(model.generate(**kwargs), loaded.generate(**kwargs))


def test_new_text_tokens_and_languages_keep_every_trained_output(tiny_config, tmp_path):
    model = make_model(tiny_config)
    features, mask = random_batch(tiny_config)
    text, k = tiny_config.text_vocab_size, 3
    batch = dict(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([0, 3]),
                 decoder_input_ids=torch.tensor([[1, 7, 9], [1, text + 5, 8]]), tgt_lang_ids=torch.tensor([0, 3]))  # fmt: skip
    with torch.no_grad():
        before = model(**batch).logits
    ctc_bias = model.ctc_head.bias.detach().clone()
    grow_text_vocabulary(model, k)
    grow_languages(model, ["pl"])
    assert model.config.text_vocab_size == text + k and model.config.languages[-1] == "pl"
    assert model.lm_head.weight.data_ptr() == model.model.shared.weight.data_ptr()
    assert model.mlm_head.decoder.weight.data_ptr() == model.model.shared.weight.data_ptr()
    moved = batch | {"decoder_input_ids": torch.tensor([[1, 7, 9], [1, text + k + 5, 8]])}  # speech code 5 moved up
    with torch.no_grad():
        after = model(**moved).logits
    torch.testing.assert_close(after[..., :text], before[..., :text])
    torch.testing.assert_close(after[..., text + k :], before[..., text:])
    assert torch.equal(model.ctc_head.bias[:text], ctc_bias) and model.ctc_head.bias.shape == (text + k,)
    model.save_pretrained(tmp_path)
    loaded = Mu2SlamForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**moved).logits, after)
    with pytest.raises(ValueError, match=r"already known"):
        grow_languages(model, ["en"])


def test_a_new_text_vocabulary_starts_from_the_mean_of_the_named_rows(tiny_config, tmp_path):
    model = make_model(tiny_config)
    features, mask = random_batch(tiny_config)
    text = tiny_config.text_vocab_size
    # new ids: the specials, old token 7 alone, the mean of 7 and 9, one with no old rows; speech codes follow
    rows = [[i] for i in range(NUM_SPECIAL_TOKENS)] + [[7], [7, 9], []]
    old = model.model.shared.weight.detach().clone()
    old_ctc_bias = model.ctc_head.bias.detach().clone()
    batch = dict(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([0, 3]),
                 tgt_lang_ids=torch.tensor([0, 3]))  # fmt: skip
    with torch.no_grad():
        before = model(**batch, decoder_input_ids=torch.tensor([[1, 7, 7], [1, text + 5, 2]])).logits
    replace_text_vocabulary(model, rows)
    new_text = len(rows)
    assert model.config.text_vocab_size == new_text and model.model.shared.weight.shape[0] == new_text + (
        old.shape[0] - text
    )
    shared = model.model.shared.weight
    assert model.lm_head.weight.data_ptr() == shared.data_ptr() == model.mlm_head.decoder.weight.data_ptr()
    torch.testing.assert_close(shared[NUM_SPECIAL_TOKENS + 1], (old[7] + old[9]) / 2)
    torch.testing.assert_close(shared[NUM_SPECIAL_TOKENS + 2], old[:text].mean(0))
    torch.testing.assert_close(shared[new_text:], old[text:])  # speech codes moved with their weights
    torch.testing.assert_close(model.ctc_head.bias[NUM_SPECIAL_TOKENS], old_ctc_bias[7])
    # the same decoder inputs under the new ids (old 7 is new 5, speech code 5 moved down) give the same logits
    with torch.no_grad():
        after = model(**batch, decoder_input_ids=torch.tensor([[1, 5, 5], [1, new_text + 5, 2]])).logits
    torch.testing.assert_close(after[..., 5], before[..., 7])
    torch.testing.assert_close(after[..., new_text:], before[..., text:])
    model.save_pretrained(tmp_path)
    loaded = Mu2SlamForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.text_vocab_size == new_text and torch.equal(loaded.model.shared.weight, shared)
    with pytest.raises(ValueError, match=r"outside the old text vocabulary"):
        replace_text_vocabulary(model, rows + [[new_text + 3]])


def test_sequence_classification_loads_a_seq2seq_checkpoint(tiny_config, tmp_path):
    seq2seq = make_model(tiny_config)
    seq2seq.save_pretrained(tmp_path)
    classifier = Mu2SlamForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    torch.testing.assert_close(classifier.model.shared.weight, seq2seq.model.shared.weight)
    torch.testing.assert_close(
        classifier.model.encoder.layers[0].conv.depthwise.weight, seq2seq.model.encoder.layers[0].conv.depthwise.weight
    )
    ids = torch.randint(NUM_SPECIAL_TOKENS, tiny_config.text_vocab_size, (4, 12))
    out = classifier(input_ids=ids, src_lang_ids=torch.tensor([0, 1, 2, 3]), labels=torch.tensor([0, 1, 2, 1]))
    assert out.logits.shape == (4, 3)
    out.loss.backward()
    assert classifier.classifier.weight.grad is not None


# --------------------------------------------------------------------------------- training modes


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config):
    features, mask = random_batch(tiny_config)
    labels = torch.randint(NUM_SPECIAL_TOKENS, tiny_config.text_vocab_size, (2, 7))
    kwargs = dict(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([0, 0]), labels=labels)
    grads = []
    for checkpointing in (False, True):
        model = make_model(tiny_config).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**kwargs).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=ATOL, rtol=0)


def test_bf16_autocast_on_cpu(tiny_config):
    model = make_model(tiny_config).train()
    features, mask = random_batch(tiny_config)
    labels = torch.randint(NUM_SPECIAL_TOKENS, tiny_config.text_vocab_size, (2, 7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([0, 0]), labels=labels)
    assert out.logits.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()


# ----------------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(tiny_config):
    model = make_model(tiny_config)
    features, mask = random_batch(tiny_config)
    lang = torch.tensor([0, 0])

    with pytest.raises(ValueError, match="input_features.*80"):
        model.generate(input_features=torch.randn(1, 100, 40), src_lang="en")
    with pytest.raises(ValueError, match="transposed"):
        model.generate(input_features=features.transpose(1, 2), src_lang="en")
    with pytest.raises(ValueError, match="too short"):
        model.generate(input_features=torch.randn(1, 6, 80), src_lang="en")
    short_mask = mask.clone()
    short_mask[1, 5:] = 0
    with pytest.raises(ValueError, match="too short"):
        model(input_features=features, attention_mask=short_mask, src_lang_ids=lang, labels=torch.ones(2, 3).long())
    with pytest.raises(ValueError, match="No input"):
        model.generate(src_lang="en")
    with pytest.raises(ValueError, match="No encoder input"):
        model(src_lang_ids=lang, labels=torch.ones(2, 3).long())
    with pytest.raises(ValueError, match="Unknown language code 'xx'.*en, de"):
        model.generate(input_features=features, attention_mask=mask, src_lang="xx")
    with pytest.raises(ValueError, match="src_lang_ids.*required"):
        model(input_features=features, attention_mask=mask, labels=torch.ones(2, 3).long())
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        model.generate(input_ids=torch.tensor([[5, 6, tiny_config.vocab_size + 3]]), src_lang="en")
    with pytest.raises(ValueError, match="labels.*outside"):
        model(input_features=features, attention_mask=mask, src_lang_ids=lang, labels=torch.tensor([[5, -7]] * 2))
    with pytest.raises(ValueError, match="Unknown modality"):
        model.generate(input_features=features, attention_mask=mask, src_lang="en", tgt_modality="video")


def test_corrupt_checkpoint_is_a_clear_error(tiny_config, tmp_path):
    make_model(tiny_config).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        Mu2SlamForConditionalGeneration.from_pretrained(tmp_path)


def test_tokenizer_beside_the_model_must_fit_its_vocabulary(tiny_config, tmp_path):
    from mu2slam_hf import train_char_tokenizer

    make_model(tiny_config).save_pretrained(tmp_path)
    tokenizer = train_char_tokenizer(["abc def"], vocab_size=64)  # far fewer ids than text_vocab_size=128
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="text_vocab_size.*does not belong|does not belong.*text_vocab_size"):
        Mu2SlamForConditionalGeneration.from_pretrained(tmp_path)


def test_speech_enters_the_encoder_on_the_scale_of_the_positions():
    """At init the front end passes normalised log-mels through at a standard deviation near 1, like the sinusoidal
    positions added to them (with N(0, 0.02) everywhere, speech was about 100x smaller and learning stalled)."""
    from mu2slam_hf.modeling_mu2slam import sinusoidal_positions

    config = Mu2SlamConfig.from_pretrained(PRESETS / "small", text_vocab_size=64)
    torch.manual_seed(0)
    model = Mu2SlamForConditionalGeneration(config)
    speech = model.model.encoder.speech_frontend(torch.randn(2, 300, config.num_mel_bins))
    positions = sinusoidal_positions(torch.arange(speech.shape[1]), config.d_model)
    ratio = (speech.std() / positions.std()).item()
    assert 0.5 < ratio < 3.0, ratio


def _repeated_ngrams(row: list[int], n: int) -> int:
    grams = [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]
    return len(grams) - len(set(grams))


def _generated_lengths(sequences: torch.Tensor, prompt: int = 1) -> list[int]:
    """New tokens of each row (after the decoder start token) before its eos (all of them where it has none)."""
    lengths = []
    for row in sequences[:, prompt:].tolist():
        lengths.append(row.index(EOS_ID) if EOS_ID in row else len(row))
    return lengths


def test_max_length_ratio_ends_each_row_relative_to_its_own_source(tiny_config, tmp_path):
    """`max_length_ratio` ends each row at ceil(ratio * its source positions) + SOURCE_LENGTH_SLACK new tokens, in
    greedy and beam search, for text and speech, and is saved with the translation decoding."""
    from mu2slam_hf import Mu2SlamForConditionalGeneration
    from mu2slam_hf.generation_mu2slam import SOURCE_LENGTH_SLACK, source_positions

    model = make_model(tiny_config)
    ids = torch.randint(NUM_SPECIAL_TOKENS, tiny_config.text_vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # the second source is 4 tokens long
    mt = dict(input_ids=ids, attention_mask=mask, src_lang="de", tgt_lang="en", max_new_tokens=60)
    free = _generated_lengths(model.generate(**mt))
    assert min(free) > 30  # a random model runs on to max_new_tokens
    german = torch.full((2,), tiny_config.language_id("de"))
    encoded = model.model.encoder(input_ids=ids, attention_mask=mask, src_lang_ids=german, return_dict=True)
    positions = source_positions(encoded)
    limits = [int(p) + SOURCE_LENGTH_SLACK for p in positions.tolist()]
    assert limits[0] > limits[1]
    for beams in (1, 3):
        limited = _generated_lengths(model.generate(**mt, num_beams=beams, max_length_ratio=1.0))
        assert all(length <= limit for length, limit in zip(limited, limits, strict=True)), (beams, limited, limits)
    assert _generated_lengths(model.generate(**mt, max_length_ratio=1.0)) == limits  # greedy: cut exactly there

    features, speech_mask = random_batch(tiny_config)
    ast = dict(input_features=features, attention_mask=speech_mask, src_lang="fr", tgt_lang="en", max_new_tokens=40)
    limited = _generated_lengths(model.generate(**ast, max_length_ratio={"speech": 0.0, "text": 5.0}))
    assert max(limited) <= SOURCE_LENGTH_SLACK
    text_only = _generated_lengths(model.generate(**ast, max_length_ratio={"text": 0.0}))
    assert text_only == _generated_lengths(model.generate(**ast, num_beams=1))  # no ratio for speech: no limit
    with pytest.raises(ValueError, match="'speech' and 'text'"):
        model.generate(**ast, max_length_ratio={"audio": 1.0})
    with pytest.raises(ValueError, match="at least 0"):
        model.generate(**mt, max_length_ratio=-1.0)

    model.set_translation_decoding({"num_beams": 1, "max_length_ratio": {"text": 0.0}})
    model.save_pretrained(tmp_path)
    loaded = Mu2SlamForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert max(_generated_lengths(loaded.generate(**mt))) <= SOURCE_LENGTH_SLACK


def test_saved_translation_decoding_is_the_default_until_the_caller_passes_its_options(tiny_config, tmp_path):
    """A translation decoding chosen on dev is saved with the model and used by `generate` for translation; a
    caller's own beam / repetition options replace it as a whole, and transcription never sees it."""
    from mu2slam_hf import Mu2SlamForConditionalGeneration

    model = make_model(tiny_config)
    ids = torch.randint(NUM_SPECIAL_TOKENS, tiny_config.text_vocab_size, (2, 9))
    mt = dict(input_ids=ids, attention_mask=torch.ones_like(ids), src_lang="de", tgt_lang="en", max_new_tokens=24)
    greedy = model.generate(**mt)
    assert _repeated_ngrams(greedy[0, 2:].tolist(), 2) > 0  # a random model loops
    with pytest.raises(ValueError, match="translation decoding takes"):
        model.set_translation_decoding({"num_beam": 4})
    model.set_translation_decoding({"num_beams": 1, "no_repeat_ngram_size": 2})
    model.save_pretrained(tmp_path)
    loaded = Mu2SlamForConditionalGeneration.from_pretrained(tmp_path).eval()
    chosen = loaded.generate(**mt)
    assert all(_repeated_ngrams(row[2:].tolist(), 2) == 0 for row in chosen)
    assert torch.equal(loaded.generate(**mt, num_beams=1), greedy)  # the caller's options, and nothing saved
    features, mask = random_batch(tiny_config)
    transcribe = dict(input_features=features, attention_mask=mask, src_lang="de", max_new_tokens=12, ctc_weight=0.0)
    assert torch.equal(loaded.generate(**transcribe), model.generate(**transcribe))  # the saved choice is AST/MT's
