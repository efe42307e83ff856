"""Recipe schema: shipped recipes validate, bad ones fail with file, line, key path, expectation."""

from pathlib import Path

import pytest
import yaml

from distill.config import Recipe, RecipeError, dump_recipe, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SHIPPED = sorted(RECIPES.glob("*.yaml"))  # accelerate/ and deepspeed/ configs are not recipes


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("recipe_path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(recipe_path):
    recipe = load_recipe(recipe_path)
    assert recipe.name


def test_shipped_recipe_set_is_complete():
    names = {p.name for p in SHIPPED}
    assert {"salmonn_1b.yaml", "salmonn_1b_stage2.yaml", "salmonn_moe.yaml", "demo.yaml"} <= names


def test_stage1_recipe_matches_the_reference_system():
    r = load_recipe(RECIPES / "salmonn_1b.yaml")
    assert r.model.whisper.name_or_path == "openai/whisper-large-v3-turbo"
    assert r.model.whisper.num_mel_bins == 128
    assert r.model.beats.enabled
    assert r.model.llm.name_or_path == "meta-llama/Llama-3.2-1B-Instruct"
    assert r.teacher.model == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    assert (r.model.qformer.window_frames, r.model.qformer.queries_per_window) == (17, 1)
    assert r.model.qformer.num_layers == 2
    quant = r.model.llm.quantization
    assert (quant.load_in_4bit, quant.quant_type, quant.double_quant, quant.compute_dtype) == (
        True, "nf4", True, "bfloat16",
    )
    lora = r.model.llm.lora
    assert (lora.r, lora.alpha, lora.dropout) == (8, 32, 0.1)
    assert set(lora.target_modules) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    }
    opt = r.train.optimizer
    assert (opt.lr, opt.min_lr, opt.warmup_start_lr, opt.weight_decay) == (3e-5, 1e-5, 1e-6, 0.05)
    assert opt.betas[1] == 0.999
    assert r.train.schedule.warmup_steps == 3000
    aug = r.data.augment
    assert (aug.noise.p, aug.noise.amplitude, aug.gain.p, aug.gain.db) == (
        0.3, (0.001, 0.015), 0.3, (-12.0, 12.0),
    )
    assert (r.eval.decoding.num_beams, r.eval.decoding.max_new_tokens) == (4, 200)
    assert r.eval.decoding.repetition_penalty == 1.5
    eff = r.eval.efficiency
    assert (eff.clip_seconds, eff.warmup_runs, eff.timed_runs) == (10.0, 10, 100)


def test_stage2_and_moe_inherit_from_stage1():
    base = load_recipe(RECIPES / "salmonn_1b.yaml")
    stage2 = load_recipe(RECIPES / "salmonn_1b_stage2.yaml")
    moe = load_recipe(RECIPES / "salmonn_moe.yaml")
    assert stage2.stage == 2 and stage2.teacher.mode == "score"
    assert stage2.teacher.task_modes == {"qa": "generate"}
    assert stage2.model.llm == base.model.llm  # untouched sections come from the base
    assert "qa" in stage2.model.prompt.instructions
    assert moe.model.moe.enabled and (moe.model.moe.num_experts, moe.model.moe.top_k) == (8, 2)
    assert moe.model.whisper == base.model.whisper


def test_unknown_key_gives_one_message_naming_file_line_and_key(tmp_path):
    path = write(tmp_path / "r.yaml", "name: x\nmodel:\n  llm:\n    lora:\n      rank: 8\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "(1 problem)" in message
    assert f"{path}:5: model.llm.lora.rank: unknown key" in message
    assert "expected one of: enabled, r, alpha, dropout, target_modules" in message


def test_wrong_type_names_key_and_expected_type(tmp_path):
    path = write(tmp_path / "r.yaml", "name: x\ntrain:\n  batch_size: many\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert f"{path}:3: train.batch_size: expected a valid integer" in str(info.value)
    assert "'many'" in str(info.value)


def test_out_of_range_values_are_rejected(tmp_path):
    path = write(
        tmp_path / "r.yaml",
        "name: x\nmodel:\n  moe: {num_experts: 4, top_k: 5}\ndata:\n  augment:\n"
        "    gain: {p: 1.5, db: [6, -6]}\n",
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "model.moe: top_k (5) must be <= num_experts (4)" in message
    assert "data.augment.gain.p: expected less than or equal to 1" in message


def test_missing_required_key(tmp_path):
    path = write(tmp_path / "r.yaml", "description: nameless\n")
    with pytest.raises(RecipeError, match=r"name: required key is missing"):
        load_recipe(path)


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path / "r.yaml", "name: x\nmodel:\n  llm: [unclosed\n")
    with pytest.raises(RecipeError, match=rf"{path}:\d+: not valid YAML"):
        load_recipe(path)


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(write(tmp_path / "r.yaml", "- a\n- b\n"))


def test_base_is_resolved_relative_to_the_file_and_merges_mappings(tmp_path):
    write(
        tmp_path / "base.yaml",
        "name: base\nmodel:\n  llm:\n    name_or_path: base-llm\n    lora:\n      r: 4\n"
        "      target_modules: [q_proj, v_proj, o_proj]\n",
    )
    child = write(
        tmp_path / "sub" / "child.yaml",
        "base: ../base.yaml\nname: child\nmodel:\n  llm:\n    lora:\n"
        "      target_modules: [k_proj]\n",
    )
    recipe = load_recipe(child)
    assert recipe.name == "child"
    assert recipe.model.llm.name_or_path == "base-llm"  # mapping merged key by key
    assert recipe.model.llm.lora.r == 4
    assert recipe.model.llm.lora.target_modules == ["k_proj"]  # lists are replaced, not merged


def test_error_inside_a_base_names_the_base_file(tmp_path):
    base = write(tmp_path / "base.yaml", "name: base\ntrain:\n  epochs: zero\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nname: child\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(child)
    assert f"{base}:3: train.epochs" in str(info.value)


def test_missing_base_and_cycles_are_clear_errors(tmp_path):
    child = write(tmp_path / "child.yaml", "base: nowhere.yaml\nname: c\n")
    with pytest.raises(RecipeError, match=r"nowhere.yaml: recipe file not found \(base of"):
        load_recipe(child)
    write(tmp_path / "a.yaml", "base: b.yaml\nname: a\n")
    write(tmp_path / "b.yaml", "base: a.yaml\nname: b\n")
    with pytest.raises(RecipeError, match="inheritance cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_dump_round_trips(tmp_path):
    recipe = load_recipe(RECIPES / "salmonn_moe.yaml")
    path = write(tmp_path / "dumped.yaml", dump_recipe(recipe))
    assert load_recipe(path) == recipe
    assert yaml.safe_load(path.read_text())["model"]["moe"]["top_k"] == 2


def test_defaults_alone_are_the_reference_student():
    recipe = Recipe(name="defaults")
    assert recipe.model.qformer.window_frames == 17
    assert recipe.model.llm.lora.r == 8
    assert recipe.train.clip.mode == "zclip" and recipe.train.clip.zclip_z_threshold == 2.5


def test_cross_tokenizer_is_a_loss_setting_and_the_old_knob_says_so(tmp_path):
    assert Recipe(name="x").loss.cross_tokenizer == "auto"
    path = write(tmp_path / "r.yaml", "name: x\nloss:\n  cross_tokenizer: uld\n")
    assert load_recipe(path).loss.cross_tokenizer == "uld"
    bad = write(tmp_path / "b.yaml", "name: x\nloss:\n  cross_tokenizer: maybe\n")
    with pytest.raises(RecipeError, match=r"b.yaml:3: loss.cross_tokenizer: expected 'auto', "
                                          r"'map', 'uld' or 'off'"):
        load_recipe(bad)
    old = write(tmp_path / "o.yaml", "name: x\nteacher:\n  allow_tokenizer_mismatch: true\n")
    with pytest.raises(RecipeError, match="replaced by loss.cross_tokenizer"):
        load_recipe(old)


def test_an_audio_rate_the_encoders_cannot_take_is_refused(tmp_path):
    path = write(tmp_path / "r.yaml", "name: x\ndata:\n  audio:\n    sample_rate: 8000\n")
    with pytest.raises(RecipeError, match="take 16000 Hz audio, got 8000"):
        load_recipe(path)
