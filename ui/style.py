"""How the page looks: Gradio's default theme with button colours dark enough for white text (WCAG AA, ≥ 4.5:1), and a
phone layout where the message box and the last reply fit the first screen. Passed to `launch` (Gradio 6)."""

from __future__ import annotations

import gradio as gr

ORANGE_700, ORANGE_800 = "#c2410c", "#9a3412"  # white text on them: 5.2:1, 7.3:1
RED_700, RED_800 = "#b91c1c", "#991b1b"  # 6.5:1, 8.3:1

THEME = gr.themes.Default(primary_hue="orange").set(
    button_primary_background_fill=ORANGE_700, button_primary_background_fill_hover=ORANGE_800,
    button_primary_background_fill_dark=ORANGE_700, button_primary_background_fill_hover_dark=ORANGE_800,
    button_primary_text_color="white", button_primary_text_color_dark="white",
    button_cancel_background_fill=RED_700, button_cancel_background_fill_hover=RED_800,
    button_cancel_background_fill_dark=RED_700, button_cancel_background_fill_hover_dark=RED_800,
    button_cancel_text_color="white", button_cancel_text_color_dark="white",
)

PHONE_WIDTH = 640
"""At most this many CSS pixels wide, the page takes its phone layout."""

CSS = f"""
@media (max-width: {PHONE_WIDTH}px) {{
  #title p {{ display: none; }}
  #title h1 {{ font-size: 1.25rem; margin: 0; }}
  #chat-column {{ order: 1; }}
  #conversation-column {{ order: 2; }}
  #chatbot {{ height: 46vh !important; min-height: 0 !important; }}
  #send, #stop {{ min-width: 64px !important; }}
}}
.attune-mark {{ opacity: 0.8; }}
footer, footer a, footer button {{ color: #4b5563 !important; }}  /* Gradio's own footer: 7.6:1, not 1.9:1 */
"""

STYLE = {"theme": THEME, "css": CSS}
"""The keyword arguments of `gr.Blocks.launch` that style the page (app.py and the tests launch with them)."""
