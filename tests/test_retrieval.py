"""Speech-text retrieval (`Mu2SlamForRetrieval`): the contrastive and spread-out losses against hand computations,
padded vs unpadded embeddings, loading from a seq2seq folder, save/load and AutoModel, Recall@k bookkeeping."""

import math

import pytest
import torch
from conftest import PRESETS, free_port, make_model, random_batch
from transformers import AutoConfig, AutoModel

from mu2slam_hf import Mu2SlamConfig, Mu2SlamForConditionalGeneration, Mu2SlamForRetrieval, Mu2SlamRetrievalConfig
from mu2slam_hf.evaluation import recall_at_k
from mu2slam_hf.instances import retrieval_pairs
from mu2slam_hf.modeling_retrieval import multi_positive_contrastive_loss, same_rows, spread_out_loss
from mu2slam_hf.vocabulary import PAD_ID


def tiny_retrieval(**overrides) -> Mu2SlamForRetrieval:
    config = Mu2SlamRetrievalConfig.from_pretrained(PRESETS / "tiny", **overrides)
    torch.manual_seed(0)
    return Mu2SlamForRetrieval(config).eval()


def texts(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded (B, L) ids and mask of token rows."""
    length = max(map(len, rows))
    ids = torch.tensor([row + [PAD_ID] * (length - len(row)) for row in rows])
    return ids, (ids != PAD_ID).long()


def test_loss_is_the_symmetric_in_batch_cross_entropy():
    model = tiny_retrieval()
    features, mask = random_batch(model.config, lengths=(120, 87, 100))
    ids, text_mask = texts([[10, 11, 12, 2], [13, 2], [14, 15, 2]])
    out = model(
        features, ids, mask, text_mask, src_lang_ids=torch.tensor([0, 1, 0]), text_lang_ids=torch.tensor([0, 1, 0])
    )
    targets = torch.arange(3)
    expected = 0.5 * (
        torch.nn.functional.cross_entropy(out.logits_per_speech, targets)
        + torch.nn.functional.cross_entropy(out.logits_per_text, targets)
    )
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.speech_embeds.norm(dim=-1), torch.ones(3))
    scale = 1.0 / model.config.retrieval_temperature
    torch.testing.assert_close(out.logits_per_speech, scale * out.speech_embeds @ out.text_embeds.T)


def test_identical_texts_in_a_batch_are_right_answers_for_each_other():
    """Czech and Dutch clips of one English line: neither translation is a negative of the other clip."""
    ids, mask = texts([[10, 11, 2], [12, 2], [10, 11, 2]])
    positives = same_rows(ids, mask)
    assert positives.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    logits = torch.tensor([[2.0, 0.5, 1.0], [0.1, 3.0, 0.2], [1.5, 0.0, 2.5]])
    probabilities = logits.softmax(-1)
    expected = -torch.stack(
        [
            (probabilities[0, 0] + probabilities[0, 2]).log(),
            probabilities[1, 1].log(),
            (probabilities[2, 0] + probabilities[2, 2]).log(),
        ]
    ).mean()
    torch.testing.assert_close(multi_positive_contrastive_loss(logits, positives), expected)


def test_spread_out_loss_rewards_orthogonal_embeddings():
    eye = torch.eye(4)
    positives = torch.eye(4, dtype=torch.bool)
    assert spread_out_loss(eye, positives).item() == pytest.approx(0.0)
    collapsed = torch.nn.functional.normalize(torch.ones(4, 4), dim=-1)
    # mean similarity 1 -> 1^2, second moment 1 -> 1 - 1/4
    assert spread_out_loss(collapsed, positives).item() == pytest.approx(1.0 + 0.75)
    model = tiny_retrieval(retrieval_spread_out_weight=0.5)
    features, mask = random_batch(model.config)
    ids, text_mask = texts([[10, 2], [11, 12, 2]])
    out = model(features, ids, mask, text_mask, src_lang_ids=torch.tensor([0, 0]), text_lang_ids=torch.tensor([0, 0]))
    torch.testing.assert_close(out.loss, out.retrieval_loss + 0.5 * out.spread_out_loss)
    assert out.spread_out_loss > 0


def test_embeddings_do_not_depend_on_padding_or_batch():
    model = tiny_retrieval()
    features, mask = random_batch(model.config, lengths=(120, 70))
    batched = model.encode_speech(features, mask, ["en", "fr"])
    alone = model.encode_speech(features[1:, :70], mask[1:, :70], "fr")
    torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=1e-4)
    ids, text_mask = texts([[10, 11, 12, 13, 2], [14, 2]])
    torch.testing.assert_close(
        model.encode_text(ids, text_mask, "en")[1:],
        model.encode_text(ids[1:, :2], text_mask[1:, :2], "en"),
        atol=1e-5,
        rtol=1e-4,
    )


def test_language_prefix_can_be_turned_off():
    model = tiny_retrieval()
    features, mask = random_batch(model.config, lengths=(90,))
    with_language = model.encode_speech(features, mask, "fr")
    model.config.retrieval_language_prefix = False
    without = model.encode_speech(features, mask, "fr")
    assert not torch.allclose(with_language, without)
    torch.testing.assert_close(without, model.encode_speech(features, mask, None))
    with pytest.raises(ValueError, match="2 language codes for a batch of 1"):
        model.config.retrieval_language_prefix = True
        model.encode_speech(features, mask, ["en", "fr"])


def test_starts_from_a_seq2seq_folder_and_round_trips(tmp_path):
    seq2seq = make_model(Mu2SlamConfig.from_pretrained(PRESETS / "tiny"))
    seq2seq.save_pretrained(tmp_path / "seq2seq")
    model = Mu2SlamForRetrieval.from_pretrained(tmp_path / "seq2seq")
    assert isinstance(model.config, Mu2SlamRetrievalConfig)
    for name, parameter in seq2seq.model.encoder.named_parameters():
        torch.testing.assert_close(model.model.encoder.get_parameter(name), parameter, msg=name)
    assert model.logit_scale.item() == pytest.approx(math.log(1.0 / model.config.retrieval_temperature))

    with torch.no_grad():
        model.projection.weight.mul_(2.0)
        model.logit_scale.fill_(3.5)
    model.save_pretrained(tmp_path / "retrieval")
    assert AutoConfig.from_pretrained(tmp_path / "retrieval").model_type == "mu2slam_retrieval"
    loaded = AutoModel.from_pretrained(tmp_path / "retrieval")
    assert type(loaded) is Mu2SlamForRetrieval and loaded.logit_scale.item() == pytest.approx(3.5)
    features, mask = random_batch(model.config)
    torch.testing.assert_close(
        loaded.eval().encode_speech(features, mask, "en"), model.eval().encode_speech(features, mask, "en")
    )
    with pytest.raises(ValueError, match="weight\\(s\\) missing"):
        Mu2SlamForConditionalGeneration.from_pretrained(tmp_path / "retrieval")


def test_retrieval_pairs_take_the_labels_as_the_text_side():
    batch = {
        "input_features": torch.zeros(2, 50, 80),
        "attention_mask": torch.ones(2, 50, dtype=torch.long),
        "labels": torch.tensor([[10, 11, 2], [12, 2, -100]]),
        "decoder_input_ids": torch.zeros(2, 3, dtype=torch.long),
        "src_lang_ids": torch.tensor([0, 7]),
        "tgt_lang_ids": torch.tensor([0, 0]),
    }
    pairs = retrieval_pairs(batch)
    assert pairs["input_ids"].tolist() == [[10, 11, 2], [12, 2, PAD_ID]]
    assert pairs["text_attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert pairs["text_lang_ids"].tolist() == [0, 0] and pairs["src_lang_ids"].tolist() == [0, 7]
    assert "decoder_input_ids" not in pairs
    with pytest.raises(ValueError, match="no labels"):
        retrieval_pairs({"input_features": torch.zeros(1, 50, 80), "attention_mask": torch.ones(1, 50)})


def test_translation_rows_pair_their_source_text_with_the_target():
    """Paper 001's translation pairs: an mt batch's source text is the query, its target the text to match."""
    batch = {
        "input_ids": torch.tensor([[20, 21, 2], [22, 2, PAD_ID]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "labels": torch.tensor([[10, 11, 2], [12, 2, -100]]),
        "decoder_input_ids": torch.zeros(2, 3, dtype=torch.long),
        "src_lang_ids": torch.tensor([7, 5]),
        "tgt_lang_ids": torch.tensor([0, 0]),
    }
    pairs = retrieval_pairs(batch)
    assert pairs["source_input_ids"].tolist() == [[20, 21, 2], [22, 2, PAD_ID]] and "input_features" not in pairs
    assert pairs["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert pairs["input_ids"].tolist() == [[10, 11, 2], [12, 2, PAD_ID]]
    assert pairs["src_lang_ids"].tolist() == [7, 5] and pairs["text_lang_ids"].tolist() == [0, 0]


def test_text_queries_are_scored_as_the_text_embeddings_of_their_sources():
    model = tiny_retrieval()
    sources, source_mask = texts([[20, 21, 2], [22, 2], [23, 24, 25, 2]])
    ids, text_mask = texts([[10, 11, 12, 2], [13, 2], [14, 15, 2]])
    src_langs, tgt_langs = torch.tensor([7, 5, 7]), torch.tensor([0, 0, 0])
    out = model(
        input_ids=ids, attention_mask=source_mask, text_attention_mask=text_mask, src_lang_ids=src_langs,
        text_lang_ids=tgt_langs, source_input_ids=sources,
    )  # fmt: skip
    queries = model.encode_text(sources, source_mask, src_langs)
    torch.testing.assert_close(out.speech_embeds, queries)
    scale = 1.0 / model.config.retrieval_temperature
    torch.testing.assert_close(out.logits_per_speech, scale * queries @ model.encode_text(ids, text_mask, tgt_langs).T)
    targets = torch.arange(3)
    expected = 0.5 * (
        torch.nn.functional.cross_entropy(out.logits_per_speech, targets)
        + torch.nn.functional.cross_entropy(out.logits_per_text, targets)
    )
    torch.testing.assert_close(out.loss, expected)
    features, mask = random_batch(model.config, lengths=(90, 90, 90))
    with pytest.raises(ValueError, match="one kind of query"):
        model(features, ids, mask, text_mask, source_input_ids=sources)
    with pytest.raises(ValueError, match="one kind of query"):
        model(input_ids=ids, text_attention_mask=text_mask)


def test_recall_at_k_counts_any_right_candidate_within_k():
    similarity = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4], [0.5, 0.4, 0.3, 0.2]])
    correct = torch.tensor([[True, False, False, False], [True, False, False, False], [False, True, False, True]])
    recall = recall_at_k(similarity, correct, ks=(1, 2, 4))
    assert recall[1].tolist() == [True, False, False]
    assert recall[2].tolist() == [True, False, True]
    assert recall[4].tolist() == [True, True, True]


def test_retrieval_config_refuses_other_models_and_bad_values(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    with pytest.raises(ValueError, match="'whisper' model, not a Mu2SLAM one"):
        Mu2SlamRetrievalConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="retrieval_temperature"):
        Mu2SlamRetrievalConfig(retrieval_temperature=0.0)
    with pytest.raises(ValueError, match="retrieval_embedding_dim must be an int >= 1"):
        Mu2SlamRetrievalConfig(retrieval_embedding_dim=0)


def test_retrieval_results_round_trip_with_their_candidate_count(tmp_path):
    from mu2slam_hf.evaluation import make_results, metric_entry, read_results, results_to_markdown, write_results

    results = make_results("m", "d", "test", [metric_entry("retrieval", "cs", "en", "s2t_r1", 42.0, 10)])
    results["retrieval_candidates"] = 500
    path, _ = write_results(results, tmp_path / "eval.json")
    assert read_results(path) == results
    markdown = results_to_markdown(results)
    assert "| cs-en | 42.00 | 10 |" in markdown and "against 500 candidate texts" in markdown


def test_speech_of_mixed_lengths_is_encoded_in_length_groups():
    """A contrastive batch drawn from several tasks mixes short and long clips: rows are encoded in groups of
    similar length, with the embeddings of one padded batch."""
    from mu2slam_hf.modeling_mu2slam import length_groups

    groups = length_groups(torch.tensor([100, 30, 95, 28, 60, 99]))
    assert [g.tolist() for g in groups] == [[0, 5, 2], [4], [1, 3]]
    model = tiny_retrieval()
    lengths = (300, 40, 290, 45, 120)
    features, mask = random_batch(model.config, lengths=lengths)
    grouped = model.encode_speech(features, mask, "en")
    one_by_one = torch.cat(
        [model.encode_speech(features[i : i + 1, :n], mask[i : i + 1, :n], "en") for i, n in enumerate(lengths)]
    )
    torch.testing.assert_close(grouped, one_by_one, atol=1e-5, rtol=1e-4)


GATHERED_WORKER = r"""
import faulthandler, os, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
sys.path.insert(0, sys.argv[3])
from conftest import random_batch
from test_retrieval import FULL_BATCH_TEXTS, texts, tiny_retrieval


def worker(rank):
    faulthandler.dump_traceback_later(240, exit=True)  # a hang ends with its stack in stderr, before the test's timeout
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = tiny_retrieval().train()
    features, mask = random_batch(model.config, lengths=(120, 87, 100, 64))
    ids, text_mask = texts(FULL_BATCH_TEXTS)
    rows = slice(2 * rank, 2 * rank + 2)
    languages = torch.zeros(2, dtype=torch.long)
    out = model(features[rows], ids[rows], mask[rows], text_mask[rows], languages, languages)
    out.loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    loss = out.loss.detach().clone()
    for value in (loss, grads):
        dist.all_reduce(value)  # what DDP does with the gradients: their mean over processes
        value /= 2
    if rank == 0:
        torch.save({"loss": loss, "grads": grads}, sys.argv[1])
    spread = tiny_retrieval(retrieval_spread_out_weight=0.5).train()  # its term stays on this process's rows
    out = spread(features[rows], ids[rows], mask[rows], text_mask[rows], languages, languages)
    assert torch.isfinite(out.loss) and out.spread_out_loss > 0
    dist.barrier()  # leave together: a gloo process whose peer has gone can hang in its teardown
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, nprocs=2)
"""
FULL_BATCH_TEXTS = [[10, 11, 2], [12, 2], [13, 14, 15, 2], [10, 11, 2]]  # rows 0 and 3 (two processes): one text


@pytest.mark.slow
def test_two_processes_train_on_the_loss_of_the_global_batch(tmp_path):
    """Under DDP each process's rows are negatives (and same-text positives) for every process's rows: two processes
    with two rows each give the loss and gradients of one process with all four rows."""
    import subprocess
    import sys
    from pathlib import Path

    script, result = tmp_path / "worker.py", tmp_path / "result.pt"
    script.write_text(GATHERED_WORKER)
    tests = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, str(script), str(result), free_port(), tests],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    gathered = torch.load(result)
    model = tiny_retrieval().train()
    features, mask = random_batch(model.config, lengths=(120, 87, 100, 64))
    ids, text_mask = texts(FULL_BATCH_TEXTS)
    languages = torch.zeros(4, dtype=torch.long)
    out = model(features, ids, mask, text_mask, languages, languages)
    out.loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(gathered["loss"], out.loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gathered["grads"], grads, rtol=1e-4, atol=1e-5)
