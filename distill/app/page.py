"""The Gradio page of ``distill app``: a clip and an instruction in, the streamed answer and
its TTFT, TPOT and peak memory out.

Offline by construction: analytics are off, the theme uses the system's fonts (Gradio's default
fetches Google Fonts), and nothing is shared. Requests go through Gradio's queue one at a time
(a model generates one answer at a time), so two people at once both get their answers, the
second after the first.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from distill.app.inference import PRESETS, InputProblem, Request, Responder, Timings  # noqa: E402

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "monospace"]


def timings_markdown(timings: Timings | None) -> str:
    if timings is None:
        return "*Generating...*"

    def seconds(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f} s"

    memory = ("n/a" if timings.peak_memory_gb is None
              else f"{timings.peak_memory_gb:.2f} GB ({timings.memory_kind})")
    return (
        "| measure | this request |\n|---|---|\n"
        f"| TTFT (time to first token) | {seconds(timings.ttft_s)} |\n"
        f"| TPOT (time per output token) | {seconds(timings.tpot_s)} |\n"
        f"| tokens generated | {timings.tokens} |\n"
        f"| peak memory | {memory} |"
    )


def build_page(responder: Responder) -> gr.Blocks:
    """The page for one loaded student (call ``.queue().launch()`` on the result, or ``serve``)."""
    with gr.Blocks(title="distill app", analytics_enabled=False) as page:
        gr.Markdown("# distill: talk to a student\n" + responder.description)
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", format=None,
                                 label="Audio clip (at most 30 s are heard)", elem_id="audio")
                preset = gr.Radio(list(PRESETS), value="Transcribe", label="Task preset",
                                  elem_id="preset")
                instruction = gr.Textbox(value=responder.instruction_for("Transcribe"),
                                         label="Instruction", lines=2, elem_id="instruction")
                with gr.Accordion("Decoding", open=False):
                    beams = gr.Slider(1, 5, value=1, step=1, elem_id="beams",
                                      label="Beams (1 = greedy, streamed token by token)")
                    max_new = gr.Slider(1, 256, value=64, step=1, label="Max new tokens",
                                        elem_id="max-new-tokens")
                    penalty = gr.Slider(1.0, 2.0, value=1.0, step=0.05,
                                        label="Repetition penalty", elem_id="penalty")
                submit = gr.Button("Submit", variant="primary", elem_id="submit")
            with gr.Column():
                answer = gr.Textbox(label="Answer", lines=6, interactive=False, elem_id="answer")
                timings = gr.Markdown(elem_id="timings")
                status = gr.Markdown(elem_id="status")

        preset.change(responder.instruction_for, inputs=preset, outputs=instruction)

        def respond(audio_path, text, num_beams, max_new_tokens, repetition_penalty):
            request = Request(audio_path, text, int(num_beams), int(max_new_tokens),
                              float(repetition_penalty))
            try:
                for update in responder.answer(request):
                    notes = "\n".join(f"- {note}" for note in update.notes)
                    yield (update.text, timings_markdown(update.timings),
                           notes or ("Done." if update.done else ""))
            except InputProblem as problem:
                yield "", "", f"**{problem}**"
            except Exception as err:  # the page must answer, whatever went wrong
                yield "", "", f"**The model failed on this request:** {type(err).__name__}: {err}"

        submit.click(respond, inputs=[audio, instruction, beams, max_new, penalty],
                     outputs=[answer, timings, status], concurrency_limit=1)
    return page


def serve(responder: Responder, *, host: str = "127.0.0.1", port: int = 7860,
          block: bool = True) -> gr.Blocks:
    """Start the page; ``block=False`` returns at once (tests, notebooks)."""
    page = build_page(responder)
    page.queue(max_size=32, default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                prevent_thread_lock=not block, show_error=False, quiet=not block,
                theme=gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS),
                ssr_mode=False, mcp_server=False)
    return page
