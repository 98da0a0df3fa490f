"""Review ROIs: a dense, filtered, paged thumbnail grid; flag ROIs with artifacts (one, a range or many at once) and
unflag them; the current ROI beside the grid with its outline, window/level, lesion views and review history.

Selection, flagging, paging and moving between ROIs rerun only the grid-and-detail fragment (``@st.fragment``);
keyboard shortcuts drive the common moves. Every decision is recorded with who and when.
"""

import threading
import time

import streamlit as st

from cadx import words
from cadx.errors import CadxError, CadxInputError
from cadx.lesion_types import LESION_TYPES, lesion_type_title
from cadx.workflows import (
    RoiFilters,
    browse_rois,
    exclude_rois,
    filter_options,
    get_roi,
    include_rois,
    lesion_view,
    review_counts,
    roi_history,
    roi_outline_image,
    roi_thumbnail,
)
from cadx.workflows.accounts import can
from cadx.workflows.browse import (
    ROI_GREY_RANGE,
    centre_width_window,
    display_windows,
    matching_roi_ids,
    neighbour_roi,
    roi_auto_window,
    roi_image_header,
    roi_page_number,
    warm_thumbnails,
)
from cadx.workflows.cohorts import list_cohorts
from cadx.workflows.features import segmentation_score_words
from pages._shared import (
    SYNTHETIC_BADGE,
    csv_download,
    current_role,
    current_user,
    manual_window,
    plain,
    signed_in,
    workspace,
)

SYNTHETIC = ":orange-badge[SYNTHETIC]"
DETAIL_WIDTH = 320  # px: room for the four action buttons in two rows at any screen width
THUMBNAILS = {"small": 64, "medium": 80, "large": 120}  # minimum grid column width, px: 7-9 columns at 1440 px
# key -> (button key clicked, what it does); the same table drives the handler and the help text
SHORTCUTS = {"j": ("review_next", "next ROI"), "k": ("review_prev", "previous ROI"),
             "f": ("review_flag", "flag with the reason shown (the last one used)"), "u": ("review_unflag", "unflag"),
             "x": ("review_toggle", "select / deselect"), "o": ("review_enlarge", "open large")}

ws = workspace()
state = st.session_state
state.setdefault("review_selected", set())  # ROI ids picked for a bulk decision (kept across grid pages)
state.setdefault("review_open", None)  # the current ROI, shown beside the grid
state.setdefault("review_anchor", None)  # the last ROI ticked: the start of a range selection
state.setdefault("review_reason", "compression_paddle")  # the last reason used: "f" flags with it
MAY_REVIEW = can(current_role(), "review")
WHY_NOT = (None if MAY_REVIEW else
           f"Your role ({current_role() or 'none'}) can look at ROIs but not flag them; ask an admin for the "
           "reviewer role.")


# ---------------------------------------------------------------------------------------------- actions ---
# Decisions run as widget callbacks, before the fragment is drawn again, so every count in it is already fresh.
def _timed(fn):
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            state["_review_callback_s"] = time.perf_counter() - start
    return run


def _decide(action: str, ids: list[int], reason: str | None = None, note: str | None = None) -> None:
    if not MAY_REVIEW:  # the buttons are disabled; a forged request still changes nothing
        state["review_flash"] = ("error", WHY_NOT)
        return
    try:
        if action == "exclude":
            exclude_rois(ws, ids, reason=reason, user=current_user(), note=note)
        else:
            include_rois(ws, ids, user=current_user(), note=note)
    except CadxInputError as exc:
        state["review_flash"] = ("error", plain(exc))
        return
    what = f"ROI #{ids[0]}" if len(ids) == 1 else f"{len(ids)} ROIs"
    done = f"flagged: {words.word(reason)}" if action == "exclude" else "included again"
    state["review_flash"] = ("success", f"{what} {done} (by {plain(current_user())}).")


def _used_note(key: str) -> None:
    """A note belongs to the decision it was typed for: cleared once that decision is stored, so that it never
    rides along with the next one (a failed decision keeps it, to be corrected)."""
    if state.get("review_flash", ("",))[0] == "success":
        state[key] = ""


@_timed
def _flag_open() -> None:
    if state["review_open"] is not None:
        _moved()
        _decide("exclude", [state["review_open"]], state.get("review_reason"), state.get("review_note"))
        _used_note("review_note")


@_timed
def _unflag_open() -> None:
    if state["review_open"] is not None:
        _moved()
        _decide("include", [state["review_open"]], note=state.get("review_note"))
        _used_note("review_note")


def _clear_selection() -> None:
    state["review_selected"] = set()
    state["review_anchor"] = None
    for key in [k for k in state if str(k).startswith("review_sel_")]:
        del state[key]


def _flag_selected() -> None:
    _decide("exclude", sorted(state["review_selected"]), state.get("review_bulk_reason"),
            state.get("review_bulk_note"))
    if state["review_flash"][0] == "success":
        _clear_selection()
    _used_note("review_bulk_note")


def _unflag_selected() -> None:
    _decide("include", sorted(state["review_selected"]), note=state.get("review_bulk_note"))
    if state["review_flash"][0] == "success":
        _clear_selection()
    _used_note("review_bulk_note")


def _bulk_preview(n_selected: int) -> str:
    """Exactly what the two bulk buttons would store, in words (the reason, the note, how many ROIs)."""
    note = (state.get("review_bulk_note") or "").strip()
    shown_note = f"note “{plain(note)}”" if note else "no note"
    rois = f"{n_selected} ROI" + ("" if n_selected == 1 else "s")
    return (f"*Flag selected* stores for {rois}: **{words.word(state.get('review_bulk_reason'))}**, {shown_note}. "
            f"*Unflag selected* stores for {rois}: included again, {shown_note}.")


def _select(ids: list[int], on: bool = True) -> None:
    for roi_id in ids:
        (state["review_selected"].add if on else state["review_selected"].discard)(roi_id)
        state[f"review_sel_{roi_id}"] = on


@_timed
def _toggle(roi_id: int, filters: RoiFilters) -> None:
    on = bool(state[f"review_sel_{roi_id}"])
    anchor = state["review_anchor"]
    if on and state.get("review_range_mode") and anchor is not None and anchor != roi_id:
        _select(matching_roi_ids(ws, filters, from_id=anchor, to_id=roi_id))  # shift-like: the whole run
    else:
        _select([roi_id], on)
    state["review_anchor"] = roi_id if on else state["review_anchor"]


def _select_range(filters: RoiFilters) -> None:
    lo, hi = state.get("review_range_from"), state.get("review_range_to")
    if lo is None or hi is None:
        state["review_flash"] = ("error", "Give both ends of the range (ROI numbers).")
        return
    ids = matching_roi_ids(ws, filters, from_id=lo, to_id=hi)
    _select(ids)
    state["review_flash"] = ("success", f"Selected {len(ids)} ROIs from #{min(lo, hi)} to #{max(lo, hi)} "
                                        "that match the filters.")


def _toggle_open() -> None:
    roi_id = state["review_open"]
    if roi_id is not None:
        _moved()
        _select([roi_id], roi_id not in state["review_selected"])
        state["review_anchor"] = roi_id


def _moved() -> None:
    """The current ROI moved or was acted on by key: bring it into view once drawn (:func:`_keep_in_view`)."""
    state["review_moved"] = state.get("review_moved", 0) + 1


def _open(roi_id: int | None) -> None:
    state["review_open"] = roi_id
    _moved()


@_timed
def _step(filters: RoiFilters, page_key: str, page_size: int, step: int) -> None:
    """Next/previous ROI in the grid's order, turning the grid page when it leaves this one."""
    current = state["review_open"]
    if current is None:
        first = browse_rois(ws, filters, page=state.get(page_key, 1), page_size=page_size).rows
        target = first[0].id if first else None
    else:
        target = neighbour_roi(ws, filters, current, step=step)
    if target is None:
        state["review_flash"] = ("info", "No more ROIs in this direction (with these filters).")
        return
    state["review_open"] = target
    _moved()
    page = roi_page_number(ws, filters, target, page_size=page_size)
    # turn the grid page: a new pagination widget starting on that page
    if page != state.get(page_key, state.get("review_page_defaults", {}).get(page_key, 1)):
        state.pop(page_key, None)
        state["review_page_gen"] = state.get("review_page_gen", 0) + 1
        state["review_page_defaults"] = {_page_key(filters, page_size): page}


def _keyboard() -> None:
    """Single-key shortcuts (ignored while typing in a field): each clicks the button of that name."""
    mapping = {key: button for key, (button, _) in SHORTCUTS.items()}
    st.html(f"""<script>
(() => {{
  const doc = window.parent ? window.parent.document : document;
  const win = doc.defaultView;
  win.__cadxReviewKeys = {mapping!r};
  if (win.__cadxReviewKeysInstalled) return;
  win.__cadxReviewKeysInstalled = true;
  doc.addEventListener('keydown', (e) => {{
    if (e.ctrlKey || e.altKey || e.metaKey || e.repeat) return;
    const t = e.target;
    if (t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName))) return;
    const key = (win.__cadxReviewKeys || {{}})[e.key.toLowerCase()];
    if (!key) return;
    const button = doc.querySelector(`.st-key-${{key}} button`);
    if (!button || button.disabled) return;
    e.preventDefault();
    button.click();
  }});
}})();
</script>""", unsafe_allow_javascript=True)


def _keep_in_view(roi_id: int, moved: int) -> None:
    """After a move (j/k, ▸, a number), bring the current ROI into view: the page scrolls until the detail column
    (sticky) sits at the top, then as little as needed to show the ROI's grid cell. Runs once per move."""
    st.html(f"""<script>
(() => {{
  const doc = window.parent ? window.parent.document : document;
  const win = doc.defaultView;
  if (win.__cadxReviewMoved === {moved}) return;
  win.__cadxReviewMoved = {moved};
  const scroller = el => {{
    for (let e = el && el.parentElement; e; e = e.parentElement) {{
      const style = win.getComputedStyle(e);
      if (/(auto|scroll)/.test(style.overflowY) && e.scrollHeight > e.clientHeight) return e;
    }}
    return doc.scrollingElement;
  }};
  let tries = 0, again = false;
  const run = () => {{
    const body = doc.querySelector('.st-key-review_body');
    const detail = doc.querySelector('.st-key-review_detail');
    const button = doc.querySelector('.st-key-review_open_{roi_id} button');
    if (!body || !detail || !button) {{ if (tries++ < 100) setTimeout(run, 50); return; }}
    const box = scroller(body);
    const top = parseFloat(win.getComputedStyle(detail.parentElement).top) || 0;  // where the column sticks
    const gap = body.getBoundingClientRect().top - box.getBoundingClientRect().top - top;
    if (gap > 0) box.scrollTop += gap;
    const cell = button.closest('[data-testid="stVerticalBlock"]');
    cell.scrollIntoView({{block: 'nearest'}});
    const under = top - (cell.getBoundingClientRect().top - box.getBoundingClientRect().top);
    if (under > 0) box.scrollTop -= under;  // not under the app's header
    // the rest of the rerun may still be drawing (a flag adds its caption to the cell, a message above the grid)
    // and Streamlit may replace the cell's element: place it again a few times over the next seconds, finding the
    // elements anew each time (idempotent once in view), unless another move has come since
    if (!again) {{
      again = true;
      [150, 400, 800, 1500, 2500, 4000, 6000, 9000].forEach(t => setTimeout(() => {{
        if (win.__cadxReviewMoved === {moved}) {{ tries = 0; run(); }}
      }}, t));
    }}
  }};
  setTimeout(run, 0);
}})();
</script>""", unsafe_allow_javascript=True)


# ---------------------------------------------------------------------------------------- filters in URL ---
# Each filter's query parameter: a reload or a shared link keeps what the grid shows.
URL_FILTERS = {"review_f_label": "label", "review_f_view": "view", "review_f_status": "status",
               "review_f_reason": "reason", "review_f_flag": "flag", "review_f_synthetic": "data",
               "review_f_lesion": "lesion", "review_f_cohort": "cohort"}
LISTS = {"review_f_label", "review_f_view", "review_f_reason", "review_f_flag"}


def _filters_from_url(choices: dict[str, list[str]]) -> None:
    """Seed the filters from the URL on a page's first run (values that are no longer offered are dropped)."""
    if state.get("_review_url_read"):
        return
    state["_review_url_read"] = True
    for key, name in URL_FILTERS.items():
        if name not in st.query_params:
            continue
        if key in LISTS:
            state[key] = [v for v in st.query_params.get_all(name) if v in choices[key]]
        elif key == "review_f_lesion":
            state[key] = st.query_params[name][:128]
        elif st.query_params[name] in choices[key]:
            state[key] = st.query_params[name]


def _filters_to_url(defaults: dict[str, object]) -> None:
    """Write the filters that differ from their defaults into the URL (and drop the others)."""
    for key, name in URL_FILTERS.items():
        value = state.get(key)
        if value in (None, "", [], defaults.get(key)):
            if name in st.query_params:
                del st.query_params[name]
        elif (list(value) if key in LISTS else value) != (st.query_params.get_all(name) if key in LISTS
                                                           else st.query_params.get(name)):
            st.query_params[name] = list(value) if key in LISTS else value


# ------------------------------------------------------------------------------------------------- page ---
st.html("""<style>
/* The current ROI and its actions stay in view beside the grid: sticky, at most the viewport's height (its lower
   part - history, other views - scrolls inside it). A fixed width, so that narrow screens squeeze the grid (fewer
   columns), never the buttons. */
.st-key-review_body > div:has(> .st-key-review_detail) { position: sticky; top: 3.75rem; align-self: flex-start; }
.st-key-review_detail { max-height: calc(100vh - 4.5rem); overflow-y: auto; overflow-x: hidden;
  padding-right: 0.25rem; }
.st-key-review_detail button p { white-space: nowrap; }
.st-key-review_actions { flex-wrap: wrap; }
.st-key-review_detail_image img { height: min(270px, 30vh) !important; width: 100% !important; object-fit: contain; }
/* grid cells: little padding, so that a lesion key and "malignant" fit on their lines */
.st-key-review_grid > div { padding: 0.3rem !important; }
.st-key-review_history p { margin-bottom: 0.15rem; overflow-wrap: anywhere; }
/* Open large fits the viewport: the image is at most as tall as the window leaves room for. */
[role="dialog"] [data-testid="stImage"] img { height: calc(100vh - 15rem) !important; width: 100% !important;
  object-fit: contain; }
.st-key-review_grid img { image-rendering: auto; }
.st-key-review_grid [data-testid="stCheckbox"] label { min-height: 0; }
/* Narrow cells: the tick box and the open button stay on one line; words wrap between words, never inside one. */
.st-key-review_grid [class*="st-key-review_row_"] { flex-wrap: nowrap; }
.st-key-review_grid [class*="st-key-review_row_"] button { padding: 0 0.2rem; min-height: 0; }
.st-key-review_grid [data-testid="stCaptionContainer"] { font-size: 0.75rem; line-height: 1.25; overflow: hidden; }
.st-key-review_grid [data-testid="stCaptionContainer"] * { overflow-wrap: normal; word-break: normal; hyphens: none; }
</style>""")
st.title("Review ROIs")
banner = st.empty()  # the synthetic banner: says what the filters show, so it is drawn after them
who = f"you are **{plain(current_user())}**" + ("" if signed_in() else " (set your name under *Reviewer name* in the "
                                                                   "sidebar)")
st.caption("Flag ROIs showing an artifact (compression paddle, location marker, …) to leave them out of "
           f"experiments; nothing is deleted and a flag can be undone. Every decision is recorded with who and when: "
           f"{who}. Keys: " + ", ".join(f"**{k}** {what}" for k, (_, what) in SHORTCUTS.items()) + ".")
if WHY_NOT:
    st.info(WHY_NOT, icon=":material/visibility:")

options = filter_options(ws)
cohorts = ["any", *[c.name for c in list_cohorts(ws)]]
DATA = {"all": None, "synthetic only": True, "real only": False}
STATUSES = ["all", "included", "excluded"]
_filters_from_url({"review_f_label": options["labels"], "review_f_view": options["views"],
                   "review_f_reason": options["reasons"], "review_f_flag": options["qc_flags"],
                   "review_f_status": STATUSES, "review_f_synthetic": list(DATA), "review_f_cohort": cohorts})
with st.expander("Filters", expanded=True):
    # A row of fixed-width filters that wraps on a narrow screen (columns would squeeze each label into a word column).
    with st.container(horizontal=True, gap="small"):
        labels = st.multiselect("Label", options["labels"], key="review_f_label", placeholder="any", width=170)
        views = st.multiselect("View", options["views"], key="review_f_view", placeholder="any", width=170)
        status = st.selectbox("Status", STATUSES, key="review_f_status", width=120)
        reasons = st.multiselect("Exclusion reason", options["reasons"], key="review_f_reason", placeholder="any",
                                 format_func=words.word, width=200)
        flags = st.multiselect("QC flag", options["qc_flags"], key="review_f_flag", placeholder="any",
                               format_func=words.word, width=200)
        synthetic = st.selectbox("Data", list(DATA), key="review_f_synthetic", width=140)
        lesion_text = st.text_input("Lesion key contains", key="review_f_lesion", width=160)
    cohort = st.selectbox("Cohort", cohorts, key="review_f_cohort",
                          help="Only the ROIs this cohort selects (whatever their review status: the Status "
                               "filter decides that).")
filters = RoiFilters(labels=tuple(labels), views=tuple(views), status=status, reasons=tuple(reasons),
                     qc_flags=tuple(flags),
                     synthetic=DATA[synthetic], lesion=lesion_text, cohort=None if cohort == "any" else cohort)
_filters_to_url({"review_f_status": "all", "review_f_synthetic": "all", "review_f_cohort": "any"})
shown_counts = review_counts(ws, filters)
if shown_counts["synthetic"]:
    banner.markdown(f"{SYNTHETIC_BADGE} {shown_counts['synthetic']} of the {shown_counts['rois']} ROIs matching the "
                    "filters are synthetic lesion phantoms generated by cadx, not patient images.")
_keyboard()


def _page_key(filters: RoiFilters, page_size: int) -> str:
    """The pagination widget's key: new for new filters (back to page 1) and when j/k turn the page."""
    return f"review_page_{abs(hash((filters, page_size)))}_{state.get('review_page_gen', 0)}"


@st.fragment
def _workbench(filters: RoiFilters) -> None:
    start = time.perf_counter()
    page_size = state.get("review_page_size", 48)
    page_key = _page_key(filters, page_size)  # new filters start again at page 1
    listing = browse_rois(ws, filters, page=state.get(page_key, state.get("review_page_defaults", {}).get(page_key, 1)),
                          page_size=page_size)
    live = review_counts(ws)
    mixed = 0 < live["synthetic"] < live["rois"]  # say "synthetic" per ROI only when real ones are there too
    flash = state.pop("review_flash", None)

    top = st.container(horizontal=True, vertical_alignment="bottom", gap="medium")
    top.metric("ROIs", live["rois"], width="content")
    top.metric("Included", live["included"], width="content")
    top.metric("Excluded", live["excluded"], width="content")
    top.metric("Matching the filters", listing.total, width="content")
    top.segmented_control("Thumbnails", list(THUMBNAILS), default="medium", key="review_thumbs")
    top.selectbox("ROIs per page", [24, 48, 96, 144], index=1, key="review_page_size", width=110)
    if flash is not None:
        {"success": st.success, "info": st.info}.get(flash[0], st.error)(flash[1])

    selected = state["review_selected"]
    with st.container(border=True):
        with st.container(horizontal=True, vertical_alignment="bottom", gap="small"):
            st.markdown(f"**{len(selected)} selected**", width="content")
            st.selectbox("Reason", list(words.EXCLUSION_REASONS), format_func=words.word,
                         key="review_bulk_reason", width=200)
            st.text_input("Note (needed for 'other')", key="review_bulk_note", width=200)
            st.toggle("Range select", key="review_range_mode", width="content",
                      help="Like shift-click: ticking an ROI also selects every ROI (matching the filters) "
                           "between it and the last one ticked.")
        if selected:
            st.caption(_bulk_preview(len(selected)))
        with st.container(horizontal=True, vertical_alignment="bottom"):
            st.button("Flag selected", on_click=_flag_selected, disabled=not selected or not MAY_REVIEW,
                      type="primary", key="review_bulk_flag", help=WHY_NOT)
            st.button("Unflag selected", on_click=_unflag_selected, disabled=not selected or not MAY_REVIEW,
                      key="review_bulk_unflag", help=WHY_NOT)
            st.button("Select this page", on_click=_select, args=([r.id for r in listing.rows],),
                      disabled=not listing.rows, key="review_select_page")
            st.button("Clear selection", on_click=_clear_selection, disabled=not selected, key="review_clear")
            st.number_input("From ROI #", min_value=1, step=1, value=None, key="review_range_from", width=120)
            st.number_input("to ROI #", min_value=1, step=1, value=None, key="review_range_to", width=120)
            st.button("Select range", on_click=_select_range, args=(filters,), key="review_select_range")

    body = st.container(horizontal=True, gap="medium", key="review_body")
    with body.container(width="stretch"):
        if not listing.rows:
            st.info("No ROI matches these filters.")
        else:
            shown_page = st.pagination(listing.n_pages, key=page_key, max_visible_pages=9,
                                       default=min(listing.page, listing.n_pages))
            if shown_page != listing.page:  # fewer pages than before (e.g. after a decision): follow the widget
                listing = browse_rois(ws, filters, page=shown_page, page_size=page_size)
            first = (listing.page - 1) * listing.page_size + 1
            st.caption(f"ROIs {first}–{first + len(listing.rows) - 1} of {listing.total} (page {listing.page} of "
                       f"{listing.n_pages}); contrast stretched for display. Tick to select, ▸ to show it beside the "
                       "grid.")
            size = THUMBNAILS[state.get("review_thumbs") or "medium"]
            grid = st.grid(columns="auto", min_column_width=size, gap="xsmall", border=True, key="review_grid")
            for roi in listing.rows:
                with grid.cell():
                    current = roi.id == state["review_open"]
                    st.image(str(roi_thumbnail(ws, roi, size=128 if size <= 110 else 192)), width="stretch")
                    key = f"review_sel_{roi.id}"
                    if key not in state:
                        state[key] = roi.id in selected
                    with st.container(horizontal=True, gap="xxsmall", vertical_alignment="center",
                                      key=f"review_row_{roi.id}"):
                        st.checkbox(f"#{roi.id}", key=key, on_change=_toggle, args=(roi.id, filters))
                        st.button("▸" if not current else "◉", key=f"review_open_{roi.id}", on_click=_open,
                                  args=(roi.id,), type="primary" if current else "tertiary",
                                  help=f"Show ROI #{roi.id} beside the grid")
                    # three short lines: the source's own id (MIAS mdbNNN, CBIS-DDSM key), label and lesion type,
                    # view and side
                    st.caption(f"{plain(roi.lesion_key)}  \n{roi.label} {_short_type(roi.lesion_type)}  \n"
                               f"{roi.view or '?'} {roi.laterality or ''}"
                               + (" · synthetic" if roi.is_synthetic and mixed else ""))
                    if not roi.included:  # words that wrap (a badge would cut them off), the code in the tooltip
                        st.caption(f":red[excluded: {words.word(roi.exclusion_reason)}]",
                                   help=words.meaning(roi.exclusion_reason))
                    for flag in roi.qc_flags:
                        st.caption(words.word(flag), help=words.meaning(flag))

    with body.container(key="review_detail", width=DETAIL_WIDTH):
        _detail(filters, page_key, page_size)
    if state["review_open"] is not None and state.get("review_moved"):
        _keep_in_view(state["review_open"], state["review_moved"])
    state["_review_fragment_s"] = time.perf_counter() - start
    _prefetch(filters, listing, THUMBNAILS[state.get("review_thumbs") or "medium"])


def _short_type(code: str | None) -> str:
    """A lesion type in a word or two for a thumbnail (MIAS's own class codes; the title is in the tooltip)."""
    return "type unknown" if code is None else code if code in LESION_TYPES else plain(code)


def _prefetch(filters: RoiFilters, listing, size: int) -> None:
    """Thumbnails of the next and previous grid pages, made in the background while the reviewer looks at this one."""
    thread = state.get("_review_prefetch")
    if thread is not None and thread.is_alive():
        return
    thread = threading.Thread(target=warm_thumbnails, args=(ws, filters), daemon=True, kwargs={
        "pages": (listing.page + 1, listing.page - 1), "page_size": listing.page_size,
        "size": 128 if size <= 110 else 192})
    thread.start()
    state["_review_prefetch"] = thread


def _window(roi) -> tuple[float, float] | None:
    """The display window chosen (in the controls below the actions, read from their state): a preset, or centre
    and width in the ROI's grey values; None is the automatic contrast."""
    window = display_windows(roi_image_header(ws, roi)).get(state.get("review_window") or "")
    if not state.get("review_manual_window"):
        return window
    centre, width = state.get("review_manual_centre"), state.get("review_manual_width")
    if centre is None or width is None:  # just switched on: it starts from what is shown
        return window or roi_auto_window(ws, roi)
    return centre_width_window(centre, width, value_range=ROI_GREY_RANGE)


def _window_controls(roi) -> None:
    with st.expander("Window / level", expanded=bool(state.get("review_manual_window"))):
        windows = display_windows(roi_image_header(ws, roi))
        name = st.selectbox("Preset", list(windows), key="review_window",
                            help="Display only: the stored ROI and the experiments are not changed.")
        if st.toggle("Manual (centre / width)", key="review_manual_window"):
            manual_window("review_manual", start=windows.get(name) or roi_auto_window(ws, roi),
                          value_range=ROI_GREY_RANGE)


def _detail(filters: RoiFilters, page_key: str, page_size: int) -> None:
    with st.container(horizontal=True, vertical_alignment="center", gap="small"):
        st.button("◀ k", key="review_prev", on_click=_step, args=(filters, page_key, page_size, -1),
                  help="Previous ROI (key k)")
        st.button("j ▶", key="review_next", on_click=_step, args=(filters, page_key, page_size, 1),
                  help="Next ROI (key j)")
        st.number_input("Open ROI number", min_value=1, step=1, value=None, key="review_goto", width=150,
                        placeholder="open ROI #", label_visibility="collapsed",  # a row, not a row and a label
                        on_change=lambda: _open(state["review_goto"]))
    roi = get_roi(ws, state["review_open"]) if state["review_open"] is not None else None
    if state["review_open"] is not None and roi is None:
        st.warning(f"There is no ROI #{state['review_open']}.")
    if roi is None:
        st.info("Pick an ROI with ▸ in the grid (or key j) to see its outline, its lesion and its history, and to "
                "flag it.")
        return
    st.subheader(f"ROI #{roi.id}")
    window = _window(roi)
    overlay, outline = roi_outline_image(ws, roi, size=384, window=window)
    with st.container(key="review_detail_image"):
        st.image(overlay, caption=(outline.description if outline is not None
                                   else "No outline: the Method-B segmentation is not computed yet."))
        scored = segmentation_score_words(ws, roi.id)
        if scored is not None:  # the outline's agreement with the reference, beside it (issue 27.3)
            st.caption(scored)
    with st.container(border=True):
        st.selectbox("Artifact", list(words.EXCLUSION_REASONS), format_func=words.word, key="review_reason",
                     disabled=not MAY_REVIEW, help=WHY_NOT)
        st.text_input("Note", key="review_note", placeholder="note (optional, except for 'other')",
                      label_visibility="collapsed", disabled=not MAY_REVIEW)
        with st.container(horizontal=True, gap="small", key="review_actions"):
            st.button("Flag (f)", on_click=_flag_open, type="primary", key="review_flag",
                      disabled=not (MAY_REVIEW and roi.included), help=WHY_NOT or "Flag with the artifact above")
            st.button("Unflag (u)", on_click=_unflag_open, key="review_unflag",
                      disabled=not (MAY_REVIEW and not roi.included), help=WHY_NOT or "Include it again")
            st.button("Deselect (x)" if roi.id in state["review_selected"] else "Select (x)", key="review_toggle",
                      on_click=_toggle_open)
            st.button("Open large (o)", key="review_enlarge", on_click=_open, args=(roi.id,))
    if state.get("review_enlarge"):
        _large(roi.id, window)
    _window_controls(roi)  # below the actions: a display setting, not on the way to them
    status = ("included" if roi.included else f"excluded: {words.word(roi.exclusion_reason)}")
    with st.container(horizontal=True, gap="xsmall"):
        st.badge(status, color="blue" if roi.included else "orange",
                 help=None if roi.included else words.meaning(roi.exclusion_reason))
        for flag in roi.qc_flags:
            st.badge(words.word(flag), color="gray", help=words.meaning(flag))
    st.markdown(
        f"Lesion **{plain(roi.lesion_key)}** ({roi.label}) of patient {plain(roi.patient_key)} · "
        f"view {plain(roi.view or '?')} "
        f"{roi.laterality or ''} · centre row {roi.centre_rc[0]:.1f}, column {roi.centre_rc[1]:.1f}"
        + (f"  \n{SYNTHETIC} a cadx lesion phantom, not a patient image." if roi.is_synthetic else ""))

    history = roi_history(ws, roi.id)
    if history:
        # lines that wrap (a table this narrow cut its columns off)
        with st.container(key="review_history", gap=None):
            st.markdown("**Review history**")
            for h in history:
                what = ({"exclude": "flagged", "include": "included again"}.get(h.action, h.action)
                        + (f": {words.word(h.reason)}" if h.reason else ""))
                st.markdown(f"{h.at.strftime('%Y-%m-%d %H:%M')} UTC · {plain(h.user)} · {what}"
                            + (f" · note: {plain(h.note)}" if h.note else ""),
                            help=words.meaning(h.reason) if h.reason else None)
    else:
        st.caption("No review decision yet: included since import.")
    _dicom_downloads(ws, roi.id, has_mask=outline is not None)

    lesion = lesion_view(ws, roi.lesion_id)
    others = [r for r in lesion.rois if r.id != roi.id]  # the current ROI is shown above: never twice
    st.markdown(f"**Lesion {plain(lesion.key)}**: {lesion.label}, {lesion_type_title(lesion.lesion_type)}"
                + (f", {lesion.size_mm:.1f} mm" if lesion.size_mm else "")
                + f" · {len(lesion.rois)} view(s) · label from {plain(lesion.pathology_source)}")
    if not others:
        st.caption("This lesion has no other view.")
    else:
        for view_roi, cell in zip(others, st.columns(max(2, len(others)), gap="small"), strict=False):
            image, _ = roi_outline_image(ws, view_roi, size=160, window=window)
            state_text = "included" if view_roi.included else f"excluded ({words.word(view_roi.exclusion_reason)})"
            with cell:
                st.image(image, width="stretch",
                         caption=f"#{view_roi.id} {view_roi.view or '?'} {view_roi.laterality or ''}: {state_text}")
                st.button("Show", key=f"review_view_{view_roi.id}", on_click=_open, args=(view_roi.id,),
                          type="tertiary")
    _similar(roi)


def _similar(roi) -> None:
    """The current ROI's nearest ROIs in a stored tap's features (cosine), each with a button to open it; computed
    only when asked (it reads the tap's features of every ROI)."""
    from cadx.workflows.curation import similar_cases, stored_taps

    taps = stored_taps(ws)
    if not taps:
        return
    choice = state.get("review_similar_tap")
    label = f"{choice[1]} of {choice[0]}" if choice in taps else f"{taps[0][1]} of {taps[0][0]}"
    with st.expander(f"Similar cases (tap {label})"):
        backbone, tap = st.selectbox("Tap", taps, format_func=lambda t: f"{t[1]} ({t[0]})", key="review_similar_tap")
        if not st.toggle("Find the 6 most similar ROIs", key="review_similar_on"):
            return
        try:
            frame, source = similar_cases(ws, roi.id, tap=tap, k=6, backbone=backbone)
        except CadxError as exc:
            st.info(str(exc))
            return
        st.caption(f"Cosine similarity of the stored {source} features; identical ROIs counted once.")
        for row, cell in zip(frame.itertuples(index=False), st.columns(3, gap="small") * 2, strict=False):
            near = get_roi(ws, int(row.roi_id))
            if near is None:
                continue
            with cell:
                st.image(str(roi_thumbnail(ws, near, size=128)), width="stretch",
                         caption=f"#{row.roi_id} {plain(row.lesion_key)} ({row.label}) · cosine {row.cosine:.3f}")
                st.button("Open", key=f"review_similar_{row.roi_id}", on_click=_open, args=(int(row.roi_id),),
                          type="tertiary")


def _dicom_downloads(ws, roi_id: int, *, has_mask: bool) -> None:
    """The ROI as DICOM SR (review, centre, outlines) and SEG (its masks on the source image), built on click."""
    from cadx.workflows.export import roi_dicom_bytes

    def _file(kind: str):
        return lambda: roi_dicom_bytes(ws, roi_id)[kind][1]

    with st.container(horizontal=True, gap="small", key="review_dicom"):
        st.download_button("DICOM SR", _file("sr"), file_name=f"roi-{roi_id:06d}.sr.dcm",
                           mime="application/dicom", key="review_download_sr",
                           help="Review decisions, centre and outlines as a DICOM structured report (TID 1500)")
        st.download_button("DICOM SEG", _file("seg"), file_name=f"roi-{roi_id:06d}.seg.dcm",
                           mime="application/dicom", key="review_download_seg", disabled=not has_mask,
                           help="The segmentations on the source image as a DICOM SEG" if has_mask
                           else "No segmentation or reference outline to export")


@st.dialog("ROI", width="large")
def _large(roi_id: int, window) -> None:
    roi = get_roi(ws, roi_id)
    st.markdown(f"**ROI #{roi.id}** · lesion {plain(roi.lesion_key)} ({roi.label}) · {roi.view or '?'} "
                f"{roi.laterality or ''} · 51.2 mm at 0.1 mm per pixel")
    overlay, outline = roi_outline_image(ws, roi, size=512, window=window)  # the detail view's window and contrast
    st.image(overlay, width="stretch", caption=outline.description if outline is not None else "No outline.")


_workbench(filters)


def _decisions_export() -> None:
    """Every review decision (centres, flags, reasons, notes, who, when) as a CSV, formulas neutralised."""
    from cadx.workflows import review_decisions

    decisions = review_decisions(ws)
    with st.expander(f"Export the review decisions ({len(decisions)})"):
        st.caption("One row per decision, oldest first: when (UTC), who, exclude or include, the reason and note, "
                   "and the ROI it was about (lesion, patient key, view, its marked centre in source-image pixels "
                   "and how it was obtained, quality flags, its state now).")
        csv_download("Review decisions (CSV)", decisions, "cadx-review-decisions.csv", key="review_decisions_csv",
                     disabled=decisions.empty)


_decisions_export()
