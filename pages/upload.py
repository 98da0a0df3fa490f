"""Upload case: add a mammogram (DICOM, a zip of a study, or PNG/TIFF/PGM with its pixel size), mark the lesion
centre with a click, check the ROI that will be stored, and save it."""

import hashlib
from functools import partial

import streamlit as st
from streamlit_image_coordinates import streamlit_image_coordinates

from cadx import words
from cadx.config import dicomweb_credentials, pacs_url
from cadx.dicomweb import SeriesInfo
from cadx.errors import CadxInputError
from cadx.validation import PIXEL_SPACING_RANGE_MM
from cadx.workflows import (
    display_image,
    display_to_image_rc,
    filter_options,
    import_upload,
    lesion_key_patients,
    patient_lesions,
    preview_roi,
    read_upload,
    roi_display,
    unpack_upload,
    upload_patients,
)
from cadx.workflows.browse import MAX_IMAGE_BYTES, REGION_WINDOW, auto_window, display_windows, zoom_region
from cadx.workflows.pacs import PACS_FETCH_MAX_INSTANCES, fetch_series_instances, find_series
from pages._shared import allowed, current_user, manual_window, plain, workspace

VIEWS = ["CC", "MLO", "ML", "LM", "XCCL", "other"]
ZOOMS = {"fit": None, "½×": 0.5, "1:1": 1.0, "2×": 2.0, "4×": 4.0, "8×": 8.0}  # screen pixels per image pixel
FROM_FILE = "From the DICOM file (pseudonym)"
NEW_PATIENT = "New patient…"
NEW_LESION = "New lesion…"

ws = workspace()


@st.cache_resource(max_entries=2, show_spinner="Unpacking…")
def _unpack(file_ids: tuple[str, ...], _files):
    return unpack_upload((f.name, f.getvalue()) for f in _files)


@st.cache_resource(max_entries=4, show_spinner="Reading the image…")
def _read(data_dir: str, sha256: str, _upload):
    return read_upload(ws, _upload)


@st.cache_resource(max_entries=8, show_spinner=False)
def _display(data_dir: str, sha256: str, centre_rc, pixel_size_mm, region, window, region_contrast, _image):
    spacing = None if pixel_size_mm is None else (pixel_size_mm, pixel_size_mm)
    return display_image(_image, centre_rc=centre_rc, pixel_spacing_mm=spacing, region=region, window=window,
                         region_contrast=region_contrast)


def _on_click(click_key: str, row_key: str, col_key: str, view_key: str, shape: tuple[int, int], region) -> None:
    """A click on the shown image (or on its zoomed region) sets the centre in image pixels before the page is drawn
    again; on the whole image it also moves the zoom view there."""
    click = st.session_state.get(click_key)
    if click:
        row, col = display_to_image_rc(click["x"], click["y"], display_size=(click["width"], click["height"]),
                                       image_shape=shape, region=region)
        st.session_state[row_key], st.session_state[col_key] = row, col
        if region is None:
            st.session_state[view_key] = (row, col)


def _pan(view_key: str, d_row: float, d_col: float) -> None:
    row, col = st.session_state[view_key]
    st.session_state[view_key] = (row + d_row, col + d_col)


def _centre_view(view_key: str, centre) -> None:
    st.session_state[view_key] = centre


def _remember_pixel_size(batch: str, key: str) -> None:
    """The pixel size given for one image of an upload batch is offered for the batch's other images (the views
    of one study share it): typed once, not once per image."""
    st.session_state["upload_batch_pixel"] = (batch, st.session_state.get(key))


def _show_report() -> None:
    saved = st.session_state.get("upload_report")
    if saved is None:
        return
    name, report = saved
    for item in report.items:
        if item.status == "imported" and report.committed:
            shown_flags = ", ".join(words.word(f.strip()) for f in (item.reason or "").split(","))
            flags = f" (QC flags: {shown_flags})" if item.reason else ""
            st.success(f"Saved **{plain(name)}** as ROI #{item.roi_id}{flags}. See it on the Review ROIs page.")
        elif item.status == "skipped":
            st.info(f"**{plain(name)}** was not saved: {plain(item.reason)}.")
        elif item.status == "error":
            st.error(f"**{plain(name)}** was not saved. {plain(item.reason)}")


st.title("Upload case")
if not allowed("upload"):
    st.stop()
st.info(
    "Files are **de-identified on ingest**: only technical header fields are kept; names, IDs, dates, UIDs, "
    "institutions, private tags and sequences are dropped, the patient becomes a keyed pseudonym and the stored "
    "file name is opaque. Research use only.",
    icon=":material/lock:",
)
_show_report()


class _Fetched:
    """An instance fetched from the PACS, in the shape of an uploaded file (it takes the same path from here)."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name, self._data = name, data
        self.file_id = "pacs-" + hashlib.sha256(data).hexdigest()[:16]

    def getvalue(self) -> bytes:
        return self._data


def _series_words(series: SeriesInfo) -> str:
    date = series.study_date or "no date"
    count = "?" if series.n_instances is None else series.n_instances
    return f"{series.modality} · study {date} · {count} image(s) · series …{series.series_uid[-16:]}"


def _from_pacs(url: str) -> None:
    """Search the configured PACS (QIDO-RS) and fetch chosen mammography series (WADO-RS) into this upload."""
    st.caption(f"Server **{plain(url)}**, set by whoever runs cadx (CADX_PACS_URL; sign-in from CADX_DICOMWEB_*). "
               "Fetched images are de-identified and stored like uploaded files, once you mark and save them.")
    c1, c2, c3 = st.columns(3)
    patient = c1.text_input("Patient ID on the PACS", key="pacs_patient").strip() or None
    date_from = c2.text_input("Study date from (YYYYMMDD)", key="pacs_from").strip() or None
    date_to = c3.text_input("Study date to (YYYYMMDD)", key="pacs_to").strip() or None
    if st.button("Search the PACS", key="pacs_search"):
        try:
            with st.spinner("Searching…"):
                st.session_state["pacs_found"] = find_series(url, credentials=dicomweb_credentials(),
                                                             patient_id=patient, date_from=date_from,
                                                             date_to=date_to)
        except CadxInputError as exc:
            st.session_state.pop("pacs_found", None)
            st.error(plain(exc))
    found: list[SeriesInfo] | None = st.session_state.get("pacs_found")
    if found is None:
        return
    mammograms = [s for s in found if s.modality == "MG"]
    others = len(found) - len(mammograms)
    st.write(f"{len(found)} series found: {len(mammograms)} mammography (MG)"
             + (f", {others} of other modalities (not offered)" if others else "") + ".")
    if not mammograms:
        return
    chosen = st.multiselect("Series to fetch", mammograms, format_func=_series_words, key="pacs_chosen")
    if st.button("Fetch into this upload", key="pacs_fetch", disabled=not chosen,
                 help=f"At most {PACS_FETCH_MAX_INSTANCES} images at once."):
        try:
            with st.spinner("Fetching…"):
                fetched = fetch_series_instances(url, chosen, credentials=dicomweb_credentials())
        except CadxInputError as exc:
            st.error(plain(exc))
        else:
            st.session_state["pacs_files"] = [_Fetched(name, data) for name, data in fetched]


pacs = pacs_url()
if pacs is not None:
    with st.expander("From PACS", expanded="pacs_found" in st.session_state):
        _from_pacs(pacs)
    if st.session_state.get("pacs_files") and st.button("Forget the fetched images", key="pacs_forget"):
        st.session_state.pop("pacs_files")
        st.rerun()

files = st.file_uploader(
    "Mammogram files",
    accept_multiple_files=True,
    key="upload_files",
    help="DICOM files (one or several), a zip of a study, or PNG/TIFF/PGM images. "
         f"At most {MAX_IMAGE_BYTES // 2**20} MB "
         "per image.",
)
if not files:  # nothing uploaded: the images fetched from the PACS, if any, take the same path
    files = st.session_state.get("pacs_files") or []
if not files:
    st.caption("Upload DICOM files, a zip of a study, or a PNG/TIFF/PGM image whose pixel size you know"
               + (", or fetch them from the PACS above." if pacs is not None else "."))
    st.stop()

unpacked = _unpack(tuple(f.file_id for f in files), files)
batch = "|".join(f.file_id for f in files)  # this upload batch: the files in the uploader now
for name, reason in unpacked.refused:
    st.error(f"**{plain(name)}** refused: {plain(reason)}.")
if not unpacked.images:
    st.stop()

if len(unpacked.images) > 1:
    index = st.selectbox("Image", range(len(unpacked.images)), format_func=lambda i: unpacked.images[i].name,
                         help="Mark and save one image at a time; the views of one lesion share its lesion key.")
else:
    index = 0
upload = unpacked.images[index]
try:
    image = _read(str(ws.data_dir), upload.sha256, upload)
except CadxInputError as exc:
    st.error(plain(exc))
    st.stop()

sha = upload.sha256[:16]
row_key, col_key, click_key = f"upload_row_{sha}", f"upload_col_{sha}", f"upload_image_{sha}"
for key in (row_key, col_key):
    st.session_state.setdefault(key, None)
rows, cols = image.pixels.shape

left, right = st.columns([3, 2], gap="large")
with right:
    st.subheader("Image")
    st.markdown(f"{plain(upload.name)}: {image.source_format.upper()}, {rows} × {cols} pixels")
    if image.pixel_spacing_mm is None:
        remembered_batch, remembered = st.session_state.get("upload_batch_pixel", (None, None))
        remembered = remembered if remembered_batch == batch else None
        pixel_key = f"upload_pixel_{sha}"
        pixel_size = st.number_input("Pixel size (mm)", min_value=PIXEL_SPACING_RANGE_MM[0],
                                     max_value=PIXEL_SPACING_RANGE_MM[1], value=remembered, step=0.005,
                                     format="%.3f", key=pixel_key, on_change=_remember_pixel_size,
                                     args=(batch, pixel_key),
                                     help="This file carries no pixel size: give it (e.g. 0.05 for 50 µm). It is "
                                          "offered for the other images of this upload.")
        if remembered is not None and pixel_size == remembered:
            st.caption(f"{remembered:g} mm, as given for another image of this upload; change it if this image "
                       "differs.")
    else:
        pixel_size = None
        st.caption(f"Pixel size {image.pixel_spacing_mm[0]:g} × {image.pixel_spacing_mm[1]:g} mm "
                   f"(from {image.pixel_spacing_source}).")
    if image.burned_in_annotation:
        st.warning("The file says its pixels carry burned-in annotations, which may identify the patient.")

    st.subheader("Lesion centre")
    st.number_input("Row (pixels from the top)", min_value=0.0, max_value=float(rows - 1), step=1.0,
                    format="%.1f", key=row_key)
    st.number_input("Column (pixels from the left)", min_value=0.0, max_value=float(cols - 1), step=1.0,
                    format="%.1f", key=col_key)

centre = None
if st.session_state[row_key] is not None and st.session_state[col_key] is not None:
    centre = (float(st.session_state[row_key]), float(st.session_state[col_key]))

with left:
    st.subheader("Click the lesion centre")
    view_key = f"upload_viewc_{sha}"
    st.session_state.setdefault(view_key, centre or ((rows - 1) / 2, (cols - 1) / 2))
    zoom = st.segmented_control("Zoom", list(ZOOMS), default="fit", key=f"upload_zoom_{sha}",
                                help="Screen pixels per image pixel. Zoom in to mark the centre at full resolution: "
                                     "a click on the zoomed view lands on the image pixel under it.") or "fit"
    scale = ZOOMS[zoom]
    # a zoomed view keeps the whole image's contrast; stretching the region shown is one more choice
    windows = {**display_windows(image.header), **({REGION_WINDOW: None} if scale is not None else {})}
    z2, z3 = st.columns([3, 1], vertical_alignment="bottom")
    window_name = z2.selectbox("Window / level", list(windows), key=f"upload_window_{sha}",
                               help="Display only: the stored ROI keeps the file's own presentation values.")
    window = windows.get(window_name)
    if z3.toggle("Manual", key=f"upload_manual_{sha}", help="Set the window yourself, in grey values"):
        start = window or auto_window(image.pixels[::4, ::4], value_range=image.value_range)
        window = manual_window(f"upload_manual_{sha}", start=start, value_range=image.value_range)
    region = None
    if scale is not None:
        region = zoom_region((rows, cols), centre_rc=st.session_state[view_key], scale=scale)
        r0, c0, rh, rw = region
        with st.container(horizontal=True, gap="small"):
            st.button("◀", key="upload_pan_left", on_click=_pan, args=(view_key, 0, -rw / 2), help="Pan left")
            st.button("▲", key="upload_pan_up", on_click=_pan, args=(view_key, -rh / 2, 0), help="Pan up")
            st.button("▼", key="upload_pan_down", on_click=_pan, args=(view_key, rh / 2, 0), help="Pan down")
            st.button("▶", key="upload_pan_right", on_click=_pan, args=(view_key, 0, rw / 2), help="Pan right")
            st.button("Centre the view on the mark", key="upload_pan_mark", on_click=_centre_view,
                      args=(view_key, centre), disabled=centre is None)
    shown = _display(str(ws.data_dir), upload.sha256, centre, pixel_size, region, window,
                     window_name == REGION_WINDOW and window is None, image)
    st.caption(f"{shown.describe()}. The red cross is the centre and the yellow box the 51.2 mm field the ROI "
               "will cover.")
    streamlit_image_coordinates(shown.pixels, key=click_key, image_format="JPEG" if scale is None else "PNG",
                                jpeg_quality=90, cursor="crosshair",
                                on_click=partial(_on_click, click_key, row_key, col_key, view_key, (rows, cols),
                                                 region))

with right:
    st.subheader("Patient and lesion")
    patients = upload_patients(ws)
    options = ([FROM_FILE] if image.source_format == "dicom" and image.patient_key else []) + patients + [NEW_PATIENT]
    patient_choice = st.selectbox("Patient", options, key="upload_patient",
                                  help="Optional for DICOM: the file's PatientID becomes a keyed pseudonym.")
    patient, lookup = patient_choice, patient_choice
    if patient_choice == FROM_FILE:
        patient, lookup = None, image.patient_key
        st.caption(f"Pseudonym {image.patient_key[:12]}… (the PatientID itself is never stored).")
        if image.patient_naming == "CBIS-DDSM":
            st.caption("The PatientID follows CBIS-DDSM's naming (patient, side and view): the pseudonym is of the "
                       "patient alone, so her other views get the same one; side and view come from it too.")
    elif patient_choice == NEW_PATIENT:
        patient = lookup = st.text_input("New patient key", key="upload_new_patient",
                                         help="An opaque key (e.g. a study code); never a name, hospital number "
                                              "or date of birth.").strip()

    lesions = {lesion.key: lesion for lesion in patient_lesions(ws, lookup)}
    lesion_choice = st.selectbox(
        "Lesion", list(lesions) + [NEW_LESION], key="upload_lesion",
        format_func=lambda k: k if k == NEW_LESION else f"{k} ({lesions[k].label}, {lesions[k].n_rois} ROI(s))",
        help="Choose the lesion when adding another view of it (e.g. the MLO of a lesion saved from its CC).")
    elsewhere: list[str] = []  # other patients that already have the typed lesion key
    if lesion_choice == NEW_LESION:
        lesion = st.text_input("New lesion key", key="upload_new_lesion",
                               help="Unique within the patient, e.g. L1.").strip()
        label = st.radio("Pathology", filter_options(ws)["labels"], index=None, horizontal=True, key="upload_label")
        if lesion in lesions:
            st.info(f"This patient already has lesion **{plain(lesion)}** ({lesions[lesion].label}, "
                    f"{lesions[lesion].n_rois} ROI(s)): this image is saved as another view of it.")
        elif lesion and (patient_choice != NEW_PATIENT or patient):
            elsewhere = lesion_key_patients(ws, lesion, other_than=lookup)
        if elsewhere:
            st.warning(f"Lesion key **{plain(lesion)}** already exists under another patient ("
                       + ", ".join(plain(k) for k in elsewhere[:3]) + ("…" if len(elsewhere) > 3 else "")
                       + "). If this image shows that lesion, choose that patient above: saved here, it becomes a "
                       "second lesion of the same name under another patient, and the folds would keep the two apart.",
                       icon=":material/warning:")
            st.checkbox("It is a different lesion: save it under this patient", key=f"upload_confirm_{sha}_{lesion}")
    else:
        lesion, label = lesion_choice, lesions[lesion_choice].label
        st.caption(f"Pathology: {plain(label)} (recorded with the lesion).")

    view_default = VIEWS.index(image.view) if image.view in VIEWS else None
    view = st.selectbox("View", VIEWS, index=view_default, key=f"upload_view_{sha}", placeholder="unknown")
    side_default = ["L", "R"].index(image.laterality) if image.laterality in ("L", "R") else None
    laterality = st.selectbox("Laterality", ["L", "R"], index=side_default, key=f"upload_side_{sha}",
                              format_func=lambda s: {"L": "left (L)", "R": "right (R)"}[s], placeholder="unknown")

    st.subheader("ROI to be stored")
    missing = []
    if centre is None:
        missing.append("click the lesion centre")
    if image.pixel_spacing_mm is None and pixel_size is None:
        missing.append("give the pixel size")
    if patient_choice == NEW_PATIENT and not patient:
        missing.append("name the new patient")
    if not lesion:
        missing.append("give the lesion key")
    if label is None:
        missing.append("choose the pathology")
    if elsewhere and not st.session_state.get(f"upload_confirm_{sha}_{lesion}"):
        missing.append("confirm the lesion key that another patient has")
    if centre is not None and not (image.pixel_spacing_mm is None and pixel_size is None):
        try:
            crop = preview_roi(image, centre, pixel_size_mm=pixel_size, name=upload.name)
        except CadxInputError as exc:
            st.error(plain(exc))
            missing.append("fix the centre")
        else:
            flags = ", ".join(words.word(f) for f in crop.flags) or "none"
            st.image(roi_display(crop.pixels, window=window), width=256,
                     caption=f"51.2 mm at 0.1 mm, centred at row {centre[0]:.1f}, column {centre[1]:.1f}. "
                             f"QC flags: {flags}. Padded: {crop.padded_fraction:.0%}.")
    if missing:
        st.caption("To save: " + ", ".join(missing) + ".")
    if st.button("Save ROI", type="primary", disabled=bool(missing), key="upload_save"):
        try:
            report = import_upload(
                ws, upload.data, filename=upload.name, patient=patient, lesion=lesion, label=label,
                centre_rc=centre, user=current_user(),
                pixel_size_mm=pixel_size if image.pixel_spacing_mm is None else None,
                view=view, laterality=laterality,
            )
        except CadxInputError as exc:
            st.error(plain(exc))
        except Exception as exc:  # an unexpected failure: say it plainly, never a stack trace
            st.error(f"Saving failed: {type(exc).__name__}: {plain(exc)}. Nothing was written.")
        else:
            st.session_state["upload_report"] = (upload.name, report)
            st.rerun()
