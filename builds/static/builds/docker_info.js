// The build's pages: "Copy reference" buttons (registry/repository@digest), and any value cut to fit
// (.ds-cut: its whole value is its title) copied by a click.
async function copyText(text) {
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
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest(".ds-copy");
  if (button) {
    await copyText(button.dataset.copy);
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy reference"; }, 2000);
    return;
  }
  const value = event.target.closest(".ds-docker-info .ds-cut, .ds-build-page .ds-cut");
  if (value && value.title && !window.getSelection().toString()) {
    await copyText(value.title);
    value.classList.add("ds-copied");
    setTimeout(() => value.classList.remove("ds-copied"), 1000);
  }
});
