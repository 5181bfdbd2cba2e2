"""The Gradio page: the chat in the middle; conversations, the model panel and the generation
settings in the sidebar. `Page` (page.py) puts it together:

- layout.py places the components and returns them by name (`Components`);
- chat.py: the chat's events (respond, Stop, retry, undo, edit, the budget) and /chat;
- conversation_list.py: the conversations kept in the browser (static/storage.js);
- model_panel.py: what is loaded, and Export and load;
- gradio_internals.py: the one use of Gradio's internals, pinned to its version.
"""

from .chat import STREAM_INTERVAL_S
from .conversation_list import LEFT_MID_ANSWER
from .layout import Components
from .page import Page

__all__ = ["LEFT_MID_ANSWER", "STREAM_INTERVAL_S", "Components", "Page"]
