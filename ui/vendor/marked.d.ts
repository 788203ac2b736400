// Types of the browser build copied here at build time (scripts/build_ui.ts).
export { Marked } from 'marked';
