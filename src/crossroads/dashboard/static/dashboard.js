// Crossroads dashboard: the only script the pages load (the Content-Security-Policy allows no inline script).
document.addEventListener("click", (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    const field = document.getElementById(copy.dataset.copy);
    field.select();
    const done = () => { copy.textContent = "Copied"; };
    if (navigator.clipboard) {
      navigator.clipboard.writeText(field.value).then(done, () => { document.execCommand("copy"); done(); });
    } else {
      document.execCommand("copy");
      done();
    }
  }
  const confirmable = event.target.closest("[data-confirm]");
  if (confirmable && !window.confirm(confirmable.dataset.confirm)) {
    event.preventDefault();
  }
});
// The workspace switcher submits as soon as another workspace is chosen (its button is there for no-script use).
document.addEventListener("change", (event) => {
  if (event.target.matches("[data-autosubmit]")) {
    event.target.form.submit();
  }
});
// With this script running the switcher needs no button (it stays for no-script use).
for (const select of document.querySelectorAll("[data-autosubmit]")) {
  const button = select.form.querySelector("button");
  if (button) {
    button.hidden = true;
  }
}
