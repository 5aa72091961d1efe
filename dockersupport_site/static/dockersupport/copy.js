// Copying on every admin page (templates/admin/base_site.html loads it): a button with data-copy
// ("Copy reference", a list's "Copy") puts that text on the clipboard; a value cut to fit on the build's
// pages (.ds-cut: its whole value is its title) is copied by a click.
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
  const button = event.target.closest("button[data-copy]");
  if (button) {
    event.preventDefault();
    await copyText(button.dataset.copy);
    const label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 2000);
    return;
  }
  const value = event.target.closest(".ds-docker-info .ds-cut, .ds-build-page .ds-cut");
  if (value && value.title && !window.getSelection().toString()) {
    await copyText(value.title);
    value.classList.add("ds-copied");
    setTimeout(() => value.classList.remove("ds-copied"), 1000);
  }
});
