// A rank module that forgot to export main.
export const notMain = 1;
