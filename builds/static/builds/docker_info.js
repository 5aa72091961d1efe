// "Copy reference" buttons of the Docker Info tab: registry/repository@digest to the clipboard.
document.addEventListener("click", async (event) => {
  const button = event.target.closest(".ds-copy");
  if (!button) return;
  const text = button.dataset.copy;
  try {
    await navigator.clipboard.writeText(text);
  } catch (error) {
    // Clipboard API unavailable (plain HTTP): fall back to a selected text area.
    const area = document.createElement("textarea");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy reference"; }, 2000);
});
