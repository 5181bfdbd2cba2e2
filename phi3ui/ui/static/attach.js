// Files pasted into the message box are attached as its 📎 button attaches them: handed to the
// box's own file input. Gradio's paste handler takes only images (and those it still takes:
// phi3ui/attachments.py then says an image cannot be read). This relies on the box's markup
// (#message holds one input[type=file]); tests/test_gradio_internals.py says when to check it.
document.addEventListener("paste", (event) => {
  const box = event.target instanceof Element ? event.target.closest("#message") : null;
  const input = box ? box.querySelector("input[type=file]") : null;
  const files = [...(event.clipboardData ? event.clipboardData.files : [])].filter((f) => !f.type.startsWith("image/"));
  if (!input || !files.length) return;
  event.preventDefault();  // the file's name is not pasted as text
  const data = new DataTransfer();
  files.forEach((file) => data.items.add(file));
  input.files = data.files;
  input.dispatchEvent(new Event("change", {bubbles: true}));
});
