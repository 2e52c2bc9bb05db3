// Usher console: copy buttons, and the add form's key fields follow "Auto-generate keys".
// Plain script, no build step; pages work without it.
'use strict';
document.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-copy]');
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source) return;
  const text = source.textContent.trim();
  const done = () => {
    const label = button.textContent;
    button.textContent = 'Copied';
    setTimeout(() => { button.textContent = label; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => {});
  } else {
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    if (document.execCommand('copy')) done();
    selection.removeAllRanges();
  }
});
document.addEventListener('DOMContentLoaded', () => {
  const auto = document.getElementById('auto_keys');
  if (!auto) return;
  const keys = ['primary_key', 'secondary_key'].map((id) => document.getElementById(id));
  const follow = () => keys.forEach((k) => { if (k) k.disabled = auto.checked; });
  auto.addEventListener('change', follow);
  follow();
});
