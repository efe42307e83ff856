"""distill evaluate end to end on a tiny saved student: report, hypotheses, CSV, clear errors."""

import csv
import json

import pytest
import soundfile as sf
import torch

from distill.cli import EXIT_BAD_INPUT, main
from distill.config import Recipe
from distill.evaluate.asr import word_error_rate
from distill.evaluate.runner import EvaluationError, evaluate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(make_cfg, tmp_path_factory):
    from students import SalmonnStudent

    torch.manual_seed(4)
    student = SalmonnStudent.from_config(make_cfg(beats=False))
    return student.save_pretrained(tmp_path_factory.mktemp("ckpt") / "student")


def write_clips(folder, n, seconds=2.0):
    generator = torch.Generator().manual_seed(0)
    for i in range(n):
        wave = 0.1 * torch.randn(int(seconds * 16000), generator=generator)
        sf.write(folder / f"clip{i}.wav", wave.numpy(), 16000)


def make_recipe(tmp_path) -> Recipe:
    write_clips(tmp_path, 3)
    (tmp_path / "asr.jsonl").write_text("".join(
        json.dumps({"id": f"a{i}", "audio": f"clip{i}.wav", "task": "asr",
                    "text": "hello world", "source": "libri" if i else "giga"}) + "\n"
        for i in range(3)))
    (tmp_path / "cap.jsonl").write_text("".join(
        json.dumps({"id": f"c{i}", "audio": f"clip{i}.wav", "task": "audiocaption",
                    "text": "a dog barks", "references": ["a dog barks", "dog barking"]}) + "\n"
        for i in range(2)))
    return Recipe.model_validate({
        "name": "tiny",
        "eval": {
            "sets": [
                {"name": "speech", "manifest": str(tmp_path / "asr.jsonl"), "task": "asr",
                 "metrics": ["wer", "cer"]},
                {"name": "sounds", "manifest": str(tmp_path / "cap.jsonl"),
                 "task": "audiocaption", "metrics": ["cider_d", "bleu_4"]},
            ],
            "decoding": {"num_beams": 1, "max_new_tokens": 4, "repetition_penalty": 1.0},
            "efficiency": {"warmup_runs": 1, "timed_runs": 3},
            "batch_size": 2,
            "output_dir": str(tmp_path / "eval"),
        },
    })


def test_evaluate_writes_a_consistent_report(tmp_path, checkpoint):
    recipe = make_recipe(tmp_path)
    report, paths = evaluate(recipe, checkpoint)
    data = json.loads(paths["json"].read_text())
    speech, sounds = data["sets"]
    assert (speech["samples"], sounds["samples"]) == (3, 2)
    lines = [json.loads(line) for line in
             (tmp_path / "eval" / "hypotheses" / "speech.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ["a0", "a1", "a2"]
    # The reported WER is the WER of the hypotheses that were written out.
    expected = word_error_rate([x["reference"] for x in lines], [x["hypothesis"] for x in lines])
    assert speech["metrics"]["wer"]["value"] == pytest.approx(expected.rate)
    assert set(speech["breakdown"]) == {"giga", "libri"}
    assert "cider_d_x100" in sounds["metrics"]
    eff = data["efficiency"]
    assert eff["timed_runs"] == 3 and eff["ttft_s"]["median"] > 0 and eff["tpot_s"]["median"] > 0
    assert eff["latency_s"]["median"] >= eff["ttft_s"]["median"]
    assert eff["peak_memory_gb"] > 0
    with (tmp_path / "eval" / "submissions" / "speech.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["testset_id", "text"] and [r[0] for r in rows[1:]] == ["a0", "a1", "a2"]
    assert paths["plot"].read_bytes().startswith(b"\x89PNG")


def test_hypotheses_match_a_direct_generate_call(tmp_path, checkpoint):
    from distill.data.audio import load_audio
    from students import SalmonnStudent

    recipe = make_recipe(tmp_path)
    evaluate(recipe, checkpoint, efficiency=False)
    first = json.loads((tmp_path / "eval" / "hypotheses" / "speech.jsonl").read_text()
                       .splitlines()[0])
    student = SalmonnStudent.from_pretrained(checkpoint).eval()
    batch = student.processor([load_audio(tmp_path / "clip0.wav").waveform],
                              [student.processor.instruction("asr")])
    ids = student.generate(batch, recipe.eval.decoding)
    assert first["hypothesis"] == student.processor.decode(ids)[0]


def test_a_trainer_checkpoint_folder_is_accepted(tmp_path, checkpoint):
    import shutil

    from distill.evaluate.runner import check_checkpoint

    trainer_dir = tmp_path / "step-00000010"
    shutil.copytree(checkpoint, trainer_dir / "student")
    assert check_checkpoint(trainer_dir) == trainer_dir / "student"


def test_missing_or_wrong_checkpoint_is_a_clear_error(tmp_path):
    recipe = make_recipe(tmp_path)
    with pytest.raises(EvaluationError, match="no such directory"):
        evaluate(recipe, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="not a student checkpoint"):
        evaluate(recipe, tmp_path / "empty")


def test_bad_manifest_names_the_file_and_line(tmp_path, checkpoint, capsys):
    recipe = make_recipe(tmp_path)
    (tmp_path / "asr.jsonl").write_text('{"id": "a0", "audio": "clip0.wav", "task": "asr"}\n')
    with pytest.raises(EvaluationError, match=r"asr.jsonl:1: .*text"):
        evaluate(recipe, checkpoint, efficiency=False)
    recipe_file = tmp_path / "r.yaml"
    import yaml

    recipe_file.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    assert main(["evaluate", str(recipe_file), "--checkpoint", str(checkpoint)]) == EXIT_BAD_INPUT
    assert "asr.jsonl:1:" in capsys.readouterr().err


def test_one_clip_sets_and_empty_references_still_write_the_report(tmp_path, checkpoint):
    # `distill evaluate ... --limit 1` on a caption set: CIDEr-D cannot be computed on one clip.
    recipe = make_recipe(tmp_path)
    recipe.eval.sets[1].metrics = ["cider_d", "bleu_4", "rouge_l", "spider"]
    (tmp_path / "asr.jsonl").write_text(json.dumps(
        {"id": "a0", "audio": "clip0.wav", "task": "asr", "text": "uh"}) + "\n")
    report, paths = evaluate(recipe, checkpoint, limit=1, efficiency=False)
    speech, sounds = json.loads(paths["json"].read_text())["sets"]
    assert sounds["samples"] == 1
    assert sounds["metrics"]["cider_d"]["value"] is None
    assert "at least 2 clips" in sounds["metrics"]["cider_d"]["unavailable_reason"]
    assert sounds["metrics"]["bleu_4"]["value"] is not None
    assert sounds["metrics"]["rouge_l"]["value"] is not None
    # The only reference normalises to nothing: no rate, said so, not a crash.
    assert speech["metrics"]["wer"]["value"] is None
    assert "every reference is empty" in speech["metrics"]["wer"]["unavailable_reason"]
    markdown = paths["markdown"].read_text()
    assert "unavailable: CIDEr-D needs at least 2 clips" in markdown
    assert "unavailable: every reference is empty" in markdown


def test_evaluation_goes_into_the_checkpoints_model_card(tmp_path, make_cfg):
    import yaml

    from students import SalmonnStudent

    # A checkpoint of its own: the module's shared one carries the card other tests' runs wrote.
    torch.manual_seed(4)
    own = SalmonnStudent.from_config(make_cfg(beats=False)).save_pretrained(tmp_path / "ckpt")
    assert "No evaluation report yet" in (own / "README.md").read_text()
    report, _ = evaluate(make_recipe(tmp_path), own, efficiency=False)
    card = (own / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    metrics = {(r["dataset"]["name"], m["type"]): m["value"]
               for r in front["model-index"][0]["results"] for m in r["metrics"]}
    wer = report.sets[0].metrics["wer"]["value"]
    assert metrics[("speech", "wer")] == pytest.approx(wer, abs=1e-4)
    assert f"| speech | asr | 3 | wer | {wer:.4g} |" in card
