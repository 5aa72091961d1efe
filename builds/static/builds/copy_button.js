// "Copy" buttons of admin lists (pushed images): the button's data-copy text to the clipboard.
document.addEventListener("click", async (event) => {
  const button = event.target.closest(".ds-copy-button");
  if (!button) return;
  event.preventDefault();
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
  const label = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = label; }, 2000);
});
