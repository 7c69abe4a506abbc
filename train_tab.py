"""The Train tab's layout and wiring: the text and settings on the left, the runs on the right; the handlers are
training.py's (Studio), and app.py puts the tab beside the playground's.
"""

from __future__ import annotations

import os

import gradio as gr

from llm import card, studio, viz
from training import NO_RUN, SOURCES, Studio, curve_svg

# -----------------------------------------------------------------------------
# layout and wiring

PRIVATE = {"api_visibility": "private"}


def setting(name: str, value, **kw):
    """A control for one setting, with its label and its line of explanation."""
    label, info = studio.FIELDS[name]
    if name == "encoding_errors":
        return gr.Radio(["strict", "replace"], value=value, label=label, info=info, **kw)
    if isinstance(value, float) and name != "time_budget":
        return gr.Number(value, label=label, info=info, **kw)
    return gr.Number(value, label=label, info=info, precision=None, step=1, **kw)


PUBLIC_NOTE = ("**This server's disk is temporary**: runs are lost when it restarts, and the oldest finished runs "
               "are removed when room is needed. To keep a run, download it (a .zip with the model) or push it to "
               "the Hub. You see only the runs started from this browser.")


def keyed(fn):
    """fn for an event whose last input is the visitor's key (the page's hidden box): fn(*inputs, key=key)."""
    def handler(*args):
        return fn(*args[:-1], key=args[-1])
    handler.__name__ = fn.__name__
    return handler


def run_form(st: Studio) -> tuple:
    """The left column: the text, the size and the settings, the plan, Start. Returns (source, upload, pasted,
    settings, plan, start)."""
    cap, sizes = st.settings.max_corpus_bytes, st.sizes
    defaults = studio.size_settings("tiny")
    source = gr.Radio(SOURCES, value=SOURCES[0], label="Text to learn from")
    upload = gr.File(label=f"A .txt file (UTF-8, up to {card.fmt_bytes(cap)})", file_types=[".txt"],
                     type="filepath", elem_id="corpus-upload")
    pasted = gr.Textbox(label=f"Text (up to {card.fmt_bytes(cap)})", lines=6, visible=False, max_length=cap,
                        elem_id="corpus-paste")
    size = gr.Radio(sizes, value="tiny", label=studio.FIELDS["size"][0],
                    info=" · ".join(f"{s}: {studio.SIZES[s][1]}" for s in sizes))
    tokenizer = gr.Radio([("BPE", "bpe"), ("characters", "char")], value="bpe", label=studio.FIELDS["tokenizer"][0],
                         info=studio.FIELDS["tokenizer"][1])
    vocab = gr.Slider(257, 8192, defaults["vocab_size"], step=1, label=studio.FIELDS["vocab_size"][0],
                      info=studio.FIELDS["vocab_size"][1])
    budget = gr.Slider(10, st.settings.max_time_budget, min(120, st.settings.max_time_budget), step=10,
                       label=studio.FIELDS["time_budget"][0], info=studio.FIELDS["time_budget"][1])
    with gr.Accordion("Advanced", open=False):
        advanced = [setting(n, defaults[n]) for n in studio.ADVANCED]
    plan = gr.Markdown(elem_id="run-plan")
    start = gr.Button("Start training", variant="primary")
    settings = [size, tokenizer, vocab, budget, *advanced]
    source.change(lambda s: (gr.update(visible=s == SOURCES[0]), gr.update(visible=s == SOURCES[1])), [source],
                  [upload, pasted], queue=False, **PRIVATE)
    size.change(lambda s: [gr.update(value=v) for v in _size_values(s)], [size], [vocab, *advanced], **PRIVATE)
    for c in settings:
        c.change(st.plan, settings, [plan], trigger_mode="always_last", show_progress="hidden", **PRIVATE)
    return source, upload, pasted, settings, plan, start


def push_panel(st: Studio, runs: gr.Dropdown, visitor: gr.Textbox) -> None:
    """"Push to the Hub" for the chosen run. On a Space with Hugging Face login (hf_oauth) the visitor signs in
    and their token pushes; in a private studio the machine's saved token or $HF_TOKEN does; a public studio
    without login offers no push (it would push with the Space owner's token)."""
    oauth = bool(os.environ.get("OAUTH_CLIENT_ID"))  # set by a Space whose front matter has hf_oauth: true
    if st.settings.public and not oauth:
        return
    with gr.Accordion("Push to the Hub", open=False, elem_id="push"):
        if oauth:
            gr.LoginButton()
        with gr.Row():
            repo = gr.Textbox(label="Model repository", placeholder="your-name/my-gpt", max_length=96, scale=3,
                              info="USER/NAME; created if it does not exist")
            private = gr.Checkbox(label="private", value=False, scale=1)
        push = gr.Button("Push this run")
        said = gr.Markdown(elem_id="push-result")
    if oauth:
        def push_run(name, repo_id, private, key, token: gr.OAuthToken | None = None):
            return st.push(name, repo_id, private, key=key, oauth_token=token.token if token else None)
    else:  # (a handler asking for gr.OAuthToken makes Gradio demand a Hugging Face login at launch)
        def push_run(name, repo_id, private, key):
            return st.push(name, repo_id, private, key=key)
    push.click(push_run, [runs, repo, private, visitor], [said], api_name="push_run")


def train_tab(st: Studio, timer: gr.Timer, visitor: gr.Textbox) -> tuple[gr.Dropdown, gr.Button, gr.Markdown, list]:
    """The tab. Returns what app.py wires to the rest of the page: the runs list, the Open button (it opens the
    run in the other tabs), and the plan with the settings it is made from (filled when the page loads). Every
    handler gets the visitor's key (`visitor`, filled from the browser's storage) last."""
    with gr.Tab("Train", id="train"):
        gr.Markdown("Train a tokenizer and a GPT on your own text. Training runs in its own process: close the page "
                    "and it goes on; come back to watch it or to open the model in the other tabs."
                    + ("\n\n" + PUBLIC_NOTE if st.settings.public else ""), elem_id="train-intro")
        with gr.Row():
            with gr.Column(scale=2):
                source, upload, pasted, settings, plan, start = run_form(st)
            with gr.Column(scale=3):
                # custom values: the list is filled per page, and the handlers check every name against the runs
                runs = gr.Dropdown([], label="Your runs" if st.settings.public else "Runs (page and command line)",
                                   allow_custom_value=True, elem_id="runs")
                status = gr.Markdown(NO_RUN, elem_id="run-status")
                progress = gr.HTML(elem_id="run-progress")
                with gr.Row():
                    stop = gr.Button("Stop", variant="stop", interactive=False)
                    resume = gr.Button("Resume", interactive=False)
                    open_btn = gr.Button("Open in the playground", variant="primary", interactive=False)
                with gr.Row():
                    download = gr.Button("Download (.zip)", interactive=False, size="sm")
                    delete = gr.Button("Delete…", interactive=False, size="sm")
                with gr.Row(visible=False) as confirm:
                    sure = gr.Markdown(elem_id="delete-question")
                    yes = gr.Button("Delete for good", variant="stop", size="sm")
                    no = gr.Button("Keep it", size="sm")
                archive = gr.File(label="The run as a .zip: its model (best/), curves and settings", visible=False,
                                  elem_id="run-archive")
                push_panel(st, runs, visitor)
                plot = gr.HTML(curve_svg([]), elem_id="run-plot")
                sample = gr.Textbox(label="Sample at the latest evaluation", lines=4, interactive=False,
                                    elem_id="run-sample")
                shown = gr.State({})  # what the timer last sent this page (Studio.watch); a State in Tabs is a tab
    watch = [status, progress, plot, sample, stop, resume, open_btn, download, delete]
    # the new run's name (what the API returns) into the list, then the list with its entry
    start.click(keyed(st.start), [source, upload, pasted, *settings, visitor], [runs], api_name="start_training") \
        .success(keyed(st.runs_update), [runs, visitor], [runs], **PRIVATE)
    stop.click(keyed(st.stop), [runs, visitor], [status, stop], api_name="stop_training")
    resume.click(keyed(st.resume), [runs, visitor], [status], api_name="resume_training")
    runs.change(keyed(st.poll), [runs, visitor], watch, show_progress="hidden", api_name="run_status")
    runs.change(lambda: (gr.update(visible=False), gr.update(visible=False, value=None)), None, [confirm, archive],
                queue=False, **PRIVATE)
    timer.tick(keyed(st.watch), [runs, shown, visitor], [*watch, runs, shown], show_progress="hidden",
               concurrency_limit=None, **PRIVATE)
    download.click(keyed(st.download), [runs, visitor], [archive], api_name="download_run") \
        .success(lambda: gr.update(visible=True), None, [archive], queue=False, **PRIVATE)
    def ask(name):
        return gr.update(visible=True), (f"Delete **{viz.escape_markdown(name or '')}** and all its files? This "
                                         "cannot be undone.")

    delete.click(ask, [runs], [confirm, sure], queue=False, **PRIVATE)
    no.click(lambda: gr.update(visible=False), None, [confirm], queue=False, **PRIVATE)
    yes.click(keyed(st.delete), [runs, visitor], [status], api_name="delete_run") \
        .then(lambda: gr.update(visible=False), None, [confirm], queue=False, **PRIVATE) \
        .success(keyed(st.runs_update), [runs, visitor], [runs], **PRIVATE)
    return runs, open_btn, plan, settings


def _size_values(size: str) -> list:
    values = studio.size_settings(size)
    return [values["vocab_size"], *(values[n] for n in studio.ADVANCED)]
