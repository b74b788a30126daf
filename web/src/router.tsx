// Client-side routes on the History API; the gateway answers every such
// path with index.html.
import type { ComponentChildren } from "preact";
import { Store, useStore } from "./store";

const path = new Store(location.pathname);
window.addEventListener("popstate", () => path.set(location.pathname));

export function navigate(to: string) {
  if (to === location.pathname + location.search) return;
  history.pushState(null, "", to);
  path.set(location.pathname);
  window.scrollTo(0, 0);
}

export function usePath(): string {
  return useStore(path);
}

export function Link(props: { href: string; class?: string; children: ComponentChildren; current?: boolean }) {
  return (
    <a
      href={props.href}
      class={props.class}
      aria-current={props.current ? "page" : undefined}
      onClick={(event) => {
        if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
        event.preventDefault();
        navigate(props.href);
      }}
    >
      {props.children}
    </a>
  );
}
