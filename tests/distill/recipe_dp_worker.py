"""One process of the recipe's data-parallel check (test_nasa_t.py runs it under torchrun on CPU): ComfyUI booted
on CPU with the pack loaded, distill.recipe.run on the tiny in-memory SD1.5 of test_nasa_t.py's recipe tests.

    python -m torch.distributed.run --nproc_per_node N recipe_dp_worker.py OUT ITERATIONS [DIE_AT]

(COMFYUI_PATH names the ComfyUI checkout.) Rank 0 writes the student to OUT/. DIE_AT: every process dies when it
starts that iteration (1-based), as a killed run does, leaving OUT/trainer.ckpt to resume from."""
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(out, iterations, die_at=None):
    spec = importlib.util.spec_from_file_location("nasa_conftest", HERE.parent / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)                   # finds ComfyUI; nasa_core, nasa_test_support by path
    comfy_env = conftest.comfy_env
    nodes = comfy_env.bootstrap(conftest.COMFY_DIR, cpu=True)
    comfy_env.init_builtin_nodes(nodes)
    pack = comfy_env.load_pack(nodes, conftest.PACK_ROOT)
    tests = sys.modules["nasa_test_support"].load_by_path("nasa_t_tests", HERE / "test_nasa_t.py")
    recipe = comfy_env.pack_submodule(pack, "distill.recipe")
    rm = comfy_env.pack_submodule(pack, "runner.random_weights.models")
    config = recipe.RecipeConfig(iterations=iterations, batch=4, micro_batch=1, resolution=64, student_lr=1e-3,
                                 checkpoint_every=1, save_dtype="fp32", lora_rank=4, lora_scale=8.0,
                                 precision="fp32", teacher_dtype="fp32")
    if die_at:
        vsd = comfy_env.pack_submodule(pack, "nasa_core.vsd")
        step, calls = vsd.SBv2Trainer.step, []

        def dies(self, prompts):
            calls.append(1)
            if len(calls) == die_at:
                raise SystemExit(f"killed at iteration {die_at}")
            return step(self, prompts)
        vsd.SBv2Trainer.step = dies
    recipe.run(out, tests.PROMPTS, tests.NEGATIVES, config, loaded=tests._loaded(rm), progress=False, log=print)
    comfy_env.exit_process(0)                           # as scripts/nasa_distill.py ends under torchrun


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
