document.querySelectorAll("form.run").forEach((f) =>
  f.addEventListener("submit", () => f.classList.add("run-status")));
