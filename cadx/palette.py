"""The one colour palette of the app's charts: Okabe & Ito's eight colours, safe for the common colour-vision
deficiencies (protanopia, deuteranopia, tritanopia), so that no chart tells benign from malignant by red versus green.

Okabe, M. & Ito, K., *Color Universal Design (CUD): how to make figures and presentations that are friendly to
colorblind people* (2002), https://jfly.uni-koeln.de/color/.
"""

from __future__ import annotations

__all__ = ["OKABE_ITO", "LABEL_COLOURS", "STATUS_COLOURS", "METHOD_COLOURS"]

#: name -> hex, in the published order.
OKABE_ITO: dict[str, str] = {
    "black": "#000000", "orange": "#E69F00", "sky blue": "#56B4E9", "bluish green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish purple": "#CC79A7",
}

#: Pathology labels: blue against vermillion (apart in lightness and hue for every common deficiency).
LABEL_COLOURS: dict[str, str] = {"benign": OKABE_ITO["blue"], "malignant": OKABE_ITO["vermillion"]}

#: Review states on maps of ROIs.
STATUS_COLOURS: dict[str, str] = {"included": OKABE_ITO["sky blue"], "flagged": OKABE_ITO["orange"],
                                  "excluded since": OKABE_ITO["black"]}

#: The paper's methods (A: SVM1 on CNN features, B: SVM2 on analytic features, C: ensemble, Z: others).
METHOD_COLOURS: dict[str, str] = {"A": OKABE_ITO["blue"], "B": OKABE_ITO["orange"], "C": OKABE_ITO["black"],
                                  "Z": OKABE_ITO["bluish green"]}
